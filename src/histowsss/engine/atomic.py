"""Atomic file writes: write to a temporary file in the same folder, flush it to disk, then rename (and flush the
folder), so that after a kill or a machine crash a file is either whole or absent; reading back with clear errors."""

from __future__ import annotations

import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# the modes a plainly created file / folder gets (0o666 / 0o777 less the umask): mkstemp's private 0o600 (mkdtemp's
# 0o700) would hide results from the colleagues and services (a lab's web server, say) that read a shared folder
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


PARTIAL = ".partial"  # in the name of every temporary file atomic_path makes, so a killed write's leftover is known


def remove_partial_files(folder: Path | str, older_than: float) -> int:
    """Delete the temporary files of writes killed before they were renamed (``.<name>.<random>.partial<ext>``)
    below ``folder`` whose modification time is before ``older_than`` (a live write's file is newer); returns the
    count."""
    return _remove_older(Path(folder).rglob(f".*{PARTIAL}*"), older_than)


def _remove_older(paths: Iterable[Path], older_than: float) -> int:
    """Delete the files of ``paths`` modified before ``older_than``; returns the count."""
    n = 0
    for p in paths:
        try:
            if p.is_file() and p.stat().st_mtime < older_than:
                p.unlink()
                n += 1
        except FileNotFoundError:  # renamed or removed meanwhile
            pass
    return n


def remove_partial_files_of(path: Path | str, age_s: float = 600.0) -> int:
    """Delete the temporary files killed writes of ``path`` left beside it (:func:`atomic_path`'s names) that are
    older than ``age_s`` seconds (a command whose write of it takes that long is no longer writing); returns the
    count. For commands that write one file into a folder they do not clean otherwise (a report)."""
    import glob
    import time

    path = Path(path)
    return _remove_older(path.parent.glob(f".{glob.escape(path.name)}.*{PARTIAL}*"), time.time() - age_s)


@contextmanager
def atomic_path(path: Path | str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On error the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL + (suffix or path.suffix or ".tmp"),
                                   dir=path.parent)
    except OSError as e:  # the error would name the temporary file; say which file could not be written, and why
        raise type(e)(e.errno, f"{e.strerror or e}: cannot write {path} (its folder is missing, read-only or "
                      "not a folder); choose another place") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)
        _fsync(tmp_path)  # the data on disk before the name: a crash cannot leave a whole-looking empty file
        os.replace(tmp_path, path)
        _fsync(path.parent)  # the rename itself
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's data to disk (best effort: some file systems refuse it for folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CorruptFileError(ValueError):
    """A file a step wrote cannot be read back (truncated or empty); the message names it and the fix."""


def read_npz(path: Path | str, fix: str = "delete it and re-run the step that wrote it with --overwrite"
             ) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file, read now; a truncated or empty file raises CorruptFileError naming it."""
    import zipfile
    import zlib

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (EOFError, OSError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise CorruptFileError(f"{path}: unreadable ({type(e).__name__}: {e}); the file is truncated or damaged "
                               f"(a machine stopped while writing it?): {fix}") from None


def write_bytes(path: Path | str, data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path | str, text: str) -> None:
    """Write text (UTF-8) atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any) -> None:
    """Write JSON atomically (indented, keys kept in insertion order)."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_npz(path: Path | str, **arrays: np.ndarray) -> None:
    """Write a compressed ``.npz`` atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())


def write_png(path: Path | str, array: np.ndarray) -> None:
    """Write a uint8/uint16 image array as PNG atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
