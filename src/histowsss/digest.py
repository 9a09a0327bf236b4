"""SHA-256 of files' bytes, read in blocks (weights files of a gigabyte and more)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

BLOCK = 16 << 20


def hash_file(h: Any, path: Path | str) -> Any:
    """Feed ``path``'s bytes into the hash object ``h`` (e.g. ``hashlib.sha256()``); returns ``h``."""
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h


def file_sha256(path: Path | str) -> str:
    """The hex SHA-256 of a file's bytes."""
    return hash_file(hashlib.sha256(), path).hexdigest()
