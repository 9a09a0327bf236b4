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


def test_writes_are_flushed_to_disk_before_the_rename(tmp_path: Path, monkeypatch):
    """fsync of the file before os.replace (and of the folder after): a machine crash cannot leave a complete-looking
    name on empty data."""
    import histowsss.engine.atomic as atomic

    order: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b))[1])
    write_text(tmp_path / "a.json", "{}")
    assert order == ["fsync", "replace", "fsync"]


def test_damaged_files_of_a_run_name_themselves_and_the_fix(tmp_path: Path):
    import numpy as np

    from histowsss.config import load_config
    from histowsss.engine.atomic import CorruptFileError, read_npz, write_npz
    from histowsss.engine.run_dir import RunDir, StepError

    good = tmp_path / "cams" / "a.npz"
    write_npz(good, cam=np.ones((2, 3, 3), np.float16))
    assert read_npz(good)["cam"].shape == (2, 3, 3)
    for name, data in (("empty.npz", b""), ("cut.npz", good.read_bytes()[:60])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CorruptFileError, match=rf"{name}: unreadable .*re-run the step that wrote it"):
            read_npz(tmp_path / name)
    run = RunDir(tmp_path / "run", load_config("demo")).init()
    run.status_path("eval_cam").parent.mkdir(parents=True, exist_ok=True)
    run.status_path("eval_cam").write_text("")
    with pytest.raises(StepError, match=r"eval_cam\.json: unreadable status record.*--from eval_cam --to eval_cam"):
        run.is_done("eval_cam", "x")


def test_a_killed_write_of_a_file_is_cleaned_by_the_next_write_of_it(tmp_path: Path):
    """(A report killed while it was written: the next report removes the leftover, not a live write's, nor
    another file's.)"""
    import time

    from histowsss.engine.atomic import remove_partial_files_of

    out = tmp_path / "report [a].html"
    old = tmp_path / ".report [a].html.x1y2.partial.html"
    new = tmp_path / ".report [a].html.z3w4.partial.html"
    other = tmp_path / ".other.html.q5r6.partial.html"
    for p in (old, new, other):
        p.write_text("half")
    hour_ago = time.time() - 3600
    for p in (old, other):
        os.utime(p, (hour_ago, hour_ago))
    assert remove_partial_files_of(out) == 1
    assert not old.exists() and new.exists() and other.exists()
