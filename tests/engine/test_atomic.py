"""Atomic writes: all or nothing, and the files are as readable as any other file the user creates."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from histowsss.engine.atomic import FILE_MODE, atomic_path, write_text


def test_written_files_follow_the_umask_not_mkstemps_private_mode(tmp_path: Path):
    write_text(tmp_path / "report.html", "<html></html>")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(os.stat(tmp_path / "report.html").st_mode) == stat.S_IMODE(os.stat(plain).st_mode) == FILE_MODE


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    target = tmp_path / "m.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]
