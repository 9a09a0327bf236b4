"""engine/run_dir: a folder re-used with other settings keeps every config its steps ran with."""

from __future__ import annotations

import json

import yaml

from histowsss.config import load_config
from histowsss.engine.run_dir import RunDir
from histowsss.evaluation.report import steps_by_config


def _run_step(rd: RunDir, step: str) -> None:
    with rd.step(step, "h-" + step):
        pass


def test_each_step_names_the_config_it_ran_with_after_config_yaml_is_rewritten(tmp_path):
    first = RunDir(tmp_path / "run", load_config("demo")).init()
    _run_step(first, "train_cam")
    second = RunDir(tmp_path / "run", load_config("demo", ["train_seg.epochs=3"])).init()
    _run_step(second, "train_seg")
    RunDir(tmp_path / "run", load_config("demo")).init()  # the first settings again: no new history file

    history = sorted((tmp_path / "run" / "config_history").glob("*.yaml"))
    assert len(history) == 2
    status = {s: json.loads((tmp_path / "run" / "status" / f"{s}.json").read_text()) for s in ("train_cam", "train_seg")}
    assert status["train_cam"]["run_config"] != status["train_seg"]["run_config"]
    cam_cfg = yaml.safe_load((tmp_path / "run" / status["train_cam"]["run_config"]).read_text())
    seg_cfg = yaml.safe_load((tmp_path / "run" / status["train_seg"]["run_config"]).read_text())
    assert seg_cfg["train_seg"]["epochs"] == 3 and cam_cfg["train_seg"]["epochs"] != 3
    # config.yaml holds the last invocation's settings
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == cam_cfg
    assert steps_by_config(tmp_path / "run") == {status["train_cam"]["run_config"]: ["train_cam"],
                                                 status["train_seg"]["run_config"]: ["train_seg"]}


def test_a_file_given_as_run_folder_is_named(tmp_path):
    import pytest

    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(FileExistsError, match="afile is a file, not a run folder"):
        RunDir(f, load_config("demo")).init()
    assert f.read_text() == "x"
    from typer.testing import CliRunner

    from histowsss.cli.app import app

    r = CliRunner().invoke(app, ["run", "demo", "--run", str(f), "--to", "train_cam"])  # the lock comes first there
    assert r.exit_code == 2 and "is a file, not a run folder" in " ".join(r.output.split()) and f.read_text() == "x"


def test_a_finished_record_is_kept_with_its_outputs_and_restorable_only_while_they_are_unchanged(tmp_path):
    """What a step wrote (not resume points, not the folder's records) is listed in its record; the record is kept
    when the step runs with other settings, and restorable while every listed file is as it was."""
    import json
    import os

    import pytest

    rd = RunDir(tmp_path / "run", load_config("demo")).init()
    (rd.path / "old.txt").write_text("made before the step")
    t = os.stat(rd.path / "old.txt").st_mtime_ns - 10**9
    os.utime(rd.path / "old.txt", ns=(t, t))  # (a second before: a file clock ticks in milliseconds)  # (a clock tick before: coarse file clocks)
    with rd.step("train_irn", "A"):
        (rd.path / "checkpoints").mkdir()
        (rd.path / "checkpoints" / "irn.safetensors").write_bytes(b"A")
        (rd.path / "checkpoints" / "irn_last.safetensors").write_bytes(b"resume")
        (rd.path / "checkpoints" / "irn_train_state.pt").write_bytes(b"resume")
        (rd.path / "logs").mkdir()
        (rd.path / "logs" / "train_irn.jsonl").write_text('{"epoch": 0}\n')
    assert sorted(json.loads(rd.status_path("train_irn").read_text())["files"]) == [
        "checkpoints/irn.safetensors", "logs/train_irn.jsonl"]
    assert rd.restorable("train_irn", "A") is None  # its own record
    with pytest.raises(KeyboardInterrupt):
        with rd.step("train_irn", "B", overwrite=True):
            (rd.path / "checkpoints" / "irn_last.safetensors").unlink()
            (rd.path / "logs" / "train_irn.jsonl").write_text('{"epoch": 0, "other": 1}\n')
            raise KeyboardInterrupt
    assert rd.restorable("train_irn", "A")["config_hash"] == "A" and rd.restorable("train_irn", "B") is None
    with pytest.raises(KeyboardInterrupt):  # the same settings as the stopped record: it goes on, nothing restored
        with rd.step("train_irn", "B"):
            raise KeyboardInterrupt
    assert rd.restore("train_irn", "A")["state"] == "done" and rd.is_done("train_irn", "A")
    assert (rd.path / "logs" / "train_irn.jsonl").read_text() == '{"epoch": 0}\n'
    assert rd.restorable("train_irn", "A") is None and rd.restore("train_irn", "A") is None
    with rd.step("train_irn", "B", overwrite=True):  # B finishes: A's network replaced
        (rd.path / "checkpoints" / "irn.safetensors").write_bytes(b"B")
    assert rd.restorable("train_irn", "A") is None and rd.restorable("train_irn", "B") is None
    (rd.path / "checkpoints" / "irn.safetensors").write_bytes(b"A")  # same size, another time: not the same file
    os.utime(rd.path / "checkpoints" / "irn.safetensors", ns=(1, 1))
    assert rd.restorable("train_irn", "A") is None
