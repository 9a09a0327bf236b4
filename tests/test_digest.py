"""File digests read in blocks equal hashlib's of the whole bytes."""

from __future__ import annotations

import hashlib

from histowsss import digest


def test_blocks_give_the_whole_files_digest(tmp_path, monkeypatch):
    monkeypatch.setattr(digest, "BLOCK", 7)  # several blocks and a short last one
    data = bytes(range(256)) * 3
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert digest.file_sha256(path) == hashlib.sha256(data).hexdigest()
    h = hashlib.sha256(b"prefix")
    assert digest.hash_file(h, path).hexdigest() == hashlib.sha256(b"prefix" + data).hexdigest()
