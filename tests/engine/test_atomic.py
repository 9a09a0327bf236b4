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


def test_a_resumed_step_removes_the_leftovers_of_killed_writes_only(tmp_path):
    import os
    import time

    from histowsss.config import load_config
    from histowsss.engine.atomic import PARTIAL, atomic_path
    from histowsss.engine.run_dir import RunDir

    with atomic_path(tmp_path / "probe.npz") as tmp:
        assert PARTIAL in tmp.name and tmp.name.startswith(".probe.npz.") and tmp.suffix == ".npz"
    run = RunDir(tmp_path / "run", load_config("demo")).init()
    stale = run.path / "cams" / f".a.npz.x1y2{PARTIAL}.npz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    kept = run.path / "cams" / "a.npz"
    kept.write_bytes(b"whole")
    with run.step("make_cam", "h1"):   # a first start: nothing is swept
        pass
    assert stale.exists()
    # a step found 'running' (its process was killed) sweeps old partial files and keeps finished ones
    (run.path / "status" / "make_cam.json").write_text('{"step": "make_cam", "state": "running"}')
    with run.step("make_cam", "h1") as info:
        fresh = run.path / "cams" / f".b.npz.z9{PARTIAL}.npz"
        fresh.write_bytes(b"live")     # a write of this run, newer than its start: not touched
    assert not stale.exists() and kept.exists() and fresh.exists()
    assert info["partial_files_removed"] == 1 and run.status("make_cam")["partial_files_removed"] == 1
