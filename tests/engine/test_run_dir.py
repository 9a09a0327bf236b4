"""engine/run_dir: a folder re-used with other settings keeps every config its steps ran with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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



def test_what_later_steps_read_of_a_step_carries_its_time_while_it_comes_out_the_same(tmp_path):
    """A step made again with the same ``handoff`` keeps the time it last changed (``handoff_since``), also after a
    stopped run in between; other contents take the new finish time, and made_again_after follows that time."""
    import time

    rd = RunDir(tmp_path / "run", load_config("demo")).init()

    def make(handoff: str, overwrite: bool = True) -> dict:
        with rd.step("eval_cam", "h", overwrite=overwrite) as info:
            info["handoff"] = handoff
        return rd.status("eval_cam")

    first = make("A", overwrite=False)["finished"]
    assert rd.status("eval_cam")["handoff_since"] == first
    with rd.step("train_seg", "t"):
        pass
    rd.status_path("train_seg").write_text(json.dumps({**rd.status("train_seg"), "started": first}))
    time.sleep(1.1)
    with pytest.raises(KeyboardInterrupt):  # stopped part-way: what it carried is kept for the next run
        with rd.step("eval_cam", "h", overwrite=True):
            raise KeyboardInterrupt
    prior = rd.status("eval_cam")["prior_handoff"]
    assert {k: v for k, v in prior.items() if k not in ("since_ns", "record")} == {"handoff": "A", "since": first}
    assert prior["record"]["finished"] == first and prior["record"]["state"] == "done"
    again = make("A", overwrite=False)
    assert again["finished"] != first and again["handoff_since"] == first and "prior_handoff" not in again
    assert rd.made_again_after("eval_cam", "train_seg") is None  # train_seg read "A": it stands
    other = make("B")
    assert other["handoff_since"] == other["finished"]
    assert rd.made_again_after("eval_cam", "train_seg") == other["finished"]
    assert make("A")["handoff_since"] != first  # back to A after B: its readers may have read B


def test_the_training_side_reads_the_time_its_own_part_last_changed(tmp_path):
    """make_cam made again for test images added: its ``train_handoff`` is the same, so a step of the training side
    (made_again_after with ``training``) stands, and one that reads every split does not."""
    import time

    rd = RunDir(tmp_path / "run", load_config("demo")).init()

    def make(whole: str, train: str) -> dict:
        with rd.step("make_cam", "h", overwrite=True) as info:
            info.update(handoff=whole, train_handoff=train)
        return rd.status("make_cam")

    first = make("all-1", "train-1")["finished"]
    for reader in ("cam_to_ir_label", "eval_cam"):
        with rd.step(reader, "r"):
            pass
        rd.status_path(reader).write_text(json.dumps({**rd.status(reader), "started": first}))
    time.sleep(1.1)
    again = make("all-2", "train-1")
    assert again["train_handoff_since"] == first and again["handoff_since"] == again["finished"] != first
    assert rd.made_again_after("make_cam", "cam_to_ir_label", training=True) is None
    assert rd.made_again_after("make_cam", "eval_cam") == again["finished"]


def test_a_stopped_step_is_read_by_the_time_it_carries_on(tmp_path):
    """make_cam stopped part-way carries the finished record's handoff times: a reader made before them is made
    again (as once the run finishes), not taken as standing because the stopped record has no finish time."""
    rd = RunDir(tmp_path / "run", load_config("demo")).init()
    with rd.step("cam_to_ir_label", "r"):
        pass
    with rd.step("make_cam", "h") as info:  # (made again after the reader began: nanoseconds tell them apart)
        info.update(handoff="X", train_handoff="X")
    finished = rd.status("make_cam")["finished"]
    assert rd.made_again_after("make_cam", "cam_to_ir_label", training=True) == finished
    with pytest.raises(KeyboardInterrupt):
        with rd.step("make_cam", "h", overwrite=True):
            raise KeyboardInterrupt
    assert rd.made_again_after("make_cam", "cam_to_ir_label", training=True) == finished
    rd.status_path("make_cam").write_text(json.dumps({**rd.status("make_cam"), "prior_handoff": "x"}))
    assert rd.made_again_after("make_cam", "cam_to_ir_label", training=True) is None  # (an odd record: no time)


def _fresh_process(run_mod) -> None:
    """Forget every fingerprint this process knows, as a new process would."""
    for cache in (run_mod._IMAGE_FINGERPRINTS, run_mod._FILE_DIGESTS, run_mod._MANIFEST_ROWS,
                  run_mod._CACHES_WRITTEN):
        cache.clear()
    run_mod._CACHES_READ.clear()


def test_image_fingerprints_are_kept_in_the_run_folder_between_processes(tmp_path, demo_data, monkeypatch):
    """A manifest's image files are read whole once: the next process takes their fingerprints from
    status/cache/fingerprints.json while their size, times and inode are the same, and reads a file rewritten since,
    or put in place with its old time; a dry run writes nothing, a damaged cache is no cache, files no longer in the
    manifest are dropped, and files changed in the last seconds are not kept."""
    import os
    import shutil

    from histowsss.config import run as run_mod
    from histowsss.engine.pipeline import run_pipeline

    cfg = load_config("demo")
    _fresh_process(run_mod)
    dry = RunDir(tmp_path / "dry", cfg).init()
    run_pipeline(cfg, dry, stop="train_cam", log=lambda m: None, dry_run=True)
    assert not (dry.path / "status" / "cache").exists()
    rd = RunDir(tmp_path / "run", cfg).init()
    (rd.path / "status").mkdir(exist_ok=True)
    cache = rd.path / "status" / "cache" / "fingerprints.json"
    first = rd.manifest_digests()
    assert json.loads(cache.read_text())["images"] == {}  # (the demo's files were written just now: not settled)
    _fresh_process(run_mod)
    monkeypatch.setattr(run_mod, "SETTLE_NS", 0)
    assert rd.manifest_digests() == first
    kept = json.loads(cache.read_text())
    assert len(kept["images"]) == len(demo_data.read_text().splitlines()) - 1 and kept["masks"]
    _fresh_process(run_mod)
    hashed: list[str] = []
    hash_image = run_mod._hash_image_file
    monkeypatch.setattr(run_mod, "_hash_image_file", lambda p, n: hashed.append(p) or hash_image(p, n))
    assert rd.manifest_digests() == first and hashed == []
    image = demo_data.parent / "images" / "test4.png"
    t = image.stat().st_mtime_ns + 10**9
    os.utime(image, ns=(t, t))  # (rewritten with the same bytes, a second later)
    _fresh_process(run_mod)
    assert rd.manifest_digests() == first and [Path(p).name for p in hashed] == ["test4.png"]
    before = image.stat()
    other = tmp_path / "other.png"  # another file put in place under its name, with its size and time
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF
    other.write_bytes(bytes(data))
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, image)
    _fresh_process(run_mod)
    assert rd.manifest_digests()["image_files"] != first["image_files"]
    for damaged in ('{"images": {"a": [[1e400, 1, 1, 1], "x"]}, "masks": {}}', "[" * 100000, "{", '{"images": 3}'):
        cache.write_text(damaged)
        _fresh_process(run_mod)
        rd.manifest_digests()  # (no crash: the files are read again)
    lines = demo_data.read_text().splitlines()
    shutil.copy(demo_data.parent / "images" / "test5.png", demo_data.parent / "images" / "test5b.png")
    demo_data.write_text("\n".join(line.replace("images/test5.png", "images/test5b.png") for line in lines) + "\n")
    _fresh_process(run_mod)
    rd.manifest_digests()
    names = {Path(f).name for f in json.loads(cache.read_text())["images"]}
    assert "test5b.png" in names and "test5.png" not in names  # (only the files of the manifest of now)


def test_versions_name_the_source_commit_of_a_checkout():
    """Installed from a git checkout (pip install -e, as CI and the scripts do), versions.json names its commit."""
    import subprocess

    from histowsss.engine.run_dir import versions

    src = Path(__import__("histowsss").__file__).resolve().parent
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("histowsss is not installed from a git checkout here")
    assert versions()["histowsss_commit"].split("+")[0] == head.stdout.strip()


def test_versions_are_of_the_code_that_ran_a_step(tmp_path: Path):
    """A run that skips every step leaves versions.json as it was (the network's code stays named); each step's
    record keeps the versions it ran with, which an export names."""
    import json

    from histowsss.config import load_config
    from histowsss.engine.run_dir import versions

    cfg = load_config("demo")
    rd = RunDir(tmp_path / "run", cfg).init()
    assert json.loads((rd.path / "versions.json").read_text()) == versions()
    (rd.path / "versions.json").write_text('{"histowsss": "0.0.1"}')  # as an older version wrote it
    RunDir(tmp_path / "run", cfg).init()  # a later command that runs nothing
    assert json.loads((rd.path / "versions.json").read_text()) == {"histowsss": "0.0.1"}
    with rd.step("train_cam", "abc"):
        pass
    assert json.loads((rd.path / "versions.json").read_text()) == versions()
    assert json.loads(rd.status_path("train_cam").read_text())["versions"] == versions()
