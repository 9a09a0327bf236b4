"""The run folder lock: a second histowsss process writing into the same run folder is refused; a refused
`histowsss run` leaves the folder's config as it was."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
from typer.testing import CliRunner

from histowsss.cli.app import app
from histowsss.engine.run_dir import StepError, run_lock


def _hold(folder: str, ready, release) -> None:
    with run_lock(folder, "histowsss run"):
        ready.set()
        release.wait(30)


def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path: Path, demo_data: Path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(tmp_path / "run"), ready, release))
    p.start()
    try:
        assert ready.wait(60)
        with pytest.raises(StepError, match=r"pid \d+ \(histowsss run\) is working in this run folder"):
            with run_lock(tmp_path / "run", "histowsss tune"):
                pass
        r = CliRunner().invoke(app, ["run", "demo", "--run", str(tmp_path / "run"), "--to", "train_cam", "--dry-run"])
        out = " ".join(r.output.split())  # a dry run may look, and says what it sees
        assert r.exit_code == 0 and "(histowsss run) is working in this run folder; what follows is the folder" in out
        assert "(histowsss run)" in (tmp_path / "run" / ".lock").read_text()  # (it writes nothing, the lock neither)
        r = CliRunner().invoke(app, ["demo", "--run", str(tmp_path / "run")])
        assert r.exit_code == 2 and "is working in this run folder" in " ".join(r.output.split())  # demo writes too
    finally:
        release.set()
        p.join(30)
    with run_lock(tmp_path / "run", "histowsss run"):  # free again once the holder is gone
        pass
    held = (tmp_path / "run" / ".lock").read_text()
    r = CliRunner().invoke(app, ["run", "demo", "--run", str(tmp_path / "run"), "--to", "train_cam", "--dry-run"])
    assert r.exit_code == 0 and (tmp_path / "run" / ".lock").read_text() == held  # a dry run writes no lock
    (tmp_path / "idle").mkdir()
    r = CliRunner().invoke(app, ["run", "demo", "--run", str(tmp_path / "idle"), "--to", "train_cam", "--dry-run"])
    assert r.exit_code == 0 and not (tmp_path / "idle" / ".lock").exists()
    with run_lock(tmp_path / "absent", "histowsss tune", create=False):
        assert not (tmp_path / "absent").exists()


def test_a_refused_run_leaves_the_config_of_the_folder_alone(tmp_path: Path):
    from histowsss.config import load_config
    from histowsss.engine.run_dir import RunDir

    run = RunDir(tmp_path / "run", load_config("demo")).init()
    before = (run.path / "config.yaml").read_text()
    res = CliRunner().invoke(app, ["run", "demo", "--run", str(run.path), "--from", "nosuchstep",
                                   "--set", "train_cam.epochs=99"])
    assert res.exit_code == 2 and "nosuchstep" in res.output
    assert (run.path / "config.yaml").read_text() == before and "epochs: 99" not in before
    assert len(list((run.path / "config_history").iterdir())) == 1
