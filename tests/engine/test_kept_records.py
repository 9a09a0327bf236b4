"""engine/kept_records: a finished record kept across other settings comes back only while its outputs are unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from histowsss.config import load_config
from histowsss.engine.run_dir import RunDir


def _irn(rd: RunDir, h: str, weights: bytes | None = b"A", log: str = '{"epoch": 0}\n', stop: bool = False,
         overwrite: bool = True, folder: dict[str, bytes] | None = None) -> None:
    """A fake train_irn under hash ``h``: writes its network (``weights``; None: leaves it), resume files and log,
    and the files of ``folder`` into out/; ``stop``: Ctrl-C at the end."""
    def body(info):
        ck = rd.sub("checkpoints")
        if weights is not None:
            (ck / "irn.safetensors").write_bytes(weights)
        (ck / "irn_last.safetensors").write_bytes(b"resume")
        (ck / "irn_train_state.pt").write_bytes(b"resume")
        (rd.sub("logs") / "train_irn.jsonl").write_text(log)
        for name, data in (folder or {}).items():
            (rd.sub("out") / name).write_bytes(data)
        info["outputs"] = ["checkpoints/irn.safetensors", "logs/train_irn.jsonl", "out/"]
        if stop:
            raise KeyboardInterrupt

    st = rd.status("train_irn")
    if stop:
        with pytest.raises(KeyboardInterrupt):
            with rd.step("train_irn", h, overwrite=overwrite and bool(st and st.get("state") == "done")) as info:
                body(info)
    else:
        with rd.step("train_irn", h, overwrite=overwrite and bool(st and st.get("state") == "done")) as info:
            body(info)


@pytest.fixture
def rd(tmp_path: Path) -> RunDir:
    return RunDir(tmp_path / "run", load_config("demo")).init()


def test_the_outputs_listed_are_the_declared_ones_and_what_changed_not_resume_points_or_older_files(rd):
    (rd.path / "old.txt").write_text("made before the step")
    t = os.stat(rd.path / "old.txt").st_mtime_ns - 10**9
    os.utime(rd.path / "old.txt", ns=(t, t))  # (a second before: the file clock ticks in milliseconds)
    (rd.sub("out") / "reused.npz").write_bytes(b"from a stopped session")  # declared, older than the step
    os.utime(rd.path / "out" / "reused.npz", ns=(t, t))
    with rd.step("train_irn", "A") as info:
        (rd.sub("checkpoints") / "irn.safetensors").write_bytes(b"A")
        (rd.path / "checkpoints" / "irn.json").write_text("{}")  # not declared, written by the step
        (rd.path / "checkpoints" / "irn_last.safetensors").write_bytes(b"resume")
        (rd.path / "checkpoints" / "irn_train_state.pt").write_bytes(b"resume")
        info["outputs"] = ["checkpoints/irn.safetensors", "out/"]
    listing = json.loads((rd.path / "status" / "files" / "train_irn.json").read_text())
    assert sorted(listing["files"]) == ["checkpoints/irn.json", "checkpoints/irn.safetensors", "out/reused.npz"]
    assert json.loads(rd.status_path("train_irn").read_text())["outputs_listed"] == 3


def test_a_record_kept_for_other_settings_comes_back_with_its_logs_while_its_outputs_are_unchanged(rd):
    _irn(rd, "A", folder={"x.npz": b"A"})
    assert rd.restorable("train_irn", "A") is None  # its own record
    _irn(rd, "B", weights=None, log='{"epoch": 0, "B": 1}\n', stop=True)  # stopped before writing its network
    assert rd.restorable("train_irn", "A")["config_hash"] == "A" and rd.restorable("train_irn", "B") is None
    _irn(rd, "B", weights=None, stop=True)  # the same settings as the stopped record: it goes on (a 2nd session)
    assert rd.restore("train_irn", "A")["state"] == "done" and rd.is_done("train_irn", "A")
    assert (rd.path / "logs" / "train_irn.jsonl").read_text() == '{"epoch": 0}\n'
    assert "restored" in rd.status("train_irn") and not (rd.path / "status" / "kept" / "train_irn.A").exists()
    assert rd.restorable("train_irn", "A") is None and rd.restore("train_irn", "A") is None


@pytest.mark.parametrize("change", ["network rewritten", "file added to a declared folder", "file removed",
                                    "same size, another time"])
def test_a_changed_output_is_never_restored(rd, change):
    _irn(rd, "A", folder={"x.npz": b"A"})
    if change == "network rewritten":
        _irn(rd, "B", weights=b"B", stop=True)
    else:
        _irn(rd, "B", weights=None, stop=True)
        if change == "file added to a declared folder":
            (rd.path / "out" / "y.npz").write_bytes(b"B")
        elif change == "file removed":
            (rd.path / "out" / "x.npz").unlink()
        else:
            os.utime(rd.path / "checkpoints" / "irn.safetensors", ns=(1, 1))
    assert rd.restorable("train_irn", "A") is None


def test_an_output_behind_a_symbolic_link_is_followed(rd, tmp_path):
    elsewhere = tmp_path / "scratch"
    elsewhere.mkdir()
    (rd.path / "checkpoints").symlink_to(elsewhere, target_is_directory=True)  # networks kept on scratch storage
    _irn(rd, "A")
    listing = json.loads((rd.path / "status" / "files" / "train_irn.json").read_text())
    assert "checkpoints/irn.safetensors" in listing["files"]
    _irn(rd, "B", weights=b"B", stop=True)
    assert rd.restorable("train_irn", "A") is None


def test_a_stopped_overwrite_of_the_same_settings_is_not_undone_by_a_detour(rd):
    """A done; --overwrite of A stopped (on purpose: images fixed in place, say); B stopped; back to A: A starts
    over, its record of before is not brought back."""
    _irn(rd, "A")
    _irn(rd, "A", weights=None, stop=True)  # --overwrite, stopped before writing the network
    _irn(rd, "B", weights=None, stop=True, overwrite=False)
    assert rd.restorable("train_irn", "A") is None


def test_a_record_without_declared_outputs_is_never_restored_and_few_are_kept(rd):
    with rd.step("eval_cam", "A"):
        pass
    with pytest.raises(KeyboardInterrupt):
        with rd.step("eval_cam", "B", overwrite=True):
            raise KeyboardInterrupt
    assert rd.restorable("eval_cam", "A") is None
    for h in "CDEFGHI":
        _irn(rd, h, weights=h.encode())
    assert len(list((rd.path / "status" / "kept").glob("train_irn.*"))) == 5
