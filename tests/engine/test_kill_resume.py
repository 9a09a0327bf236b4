"""A run stopped with SIGTERM, then killed with SIGKILL, in the middle of a step resumes and ends with the same files
as an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from histowsss.data.synthetic import generate_synthetic_dataset

FAST = ["train_cam.epochs=1", "train_cam.crop_size=48", "train_cam.crops_per_image=2", "train_cam.cache_copies=1",
        "train_cam.head_channels=16", "make_cam.scales=[1.0,2.0]", "make_cam.flip=true"]


def _cmd(manifest: Path, run: Path, *extra: str) -> list[str]:
    sets = [a for o in [f"data.manifest={manifest}"] + FAST for a in ("--set", o)]
    return [sys.executable, "-m", "histowsss.cli.app", "run", "demo", "--run", str(run), *sets, *extra]


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_sigkill_during_make_cam_then_resume(tmp_path):
    manifest = generate_synthetic_dataset(tmp_path / "data", {"train": 4, "val": 0, "test": 20}, size=96)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    a = tmp_path / "a"
    subprocess.run(_cmd(manifest, a, "--to", "train_cam"), check=True, env=env, capture_output=True)
    b = tmp_path / "b"
    shutil.copytree(a, b)  # same trained checkpoint for both runs
    subprocess.run(_cmd(manifest, a, "--from", "make_cam", "--to", "make_cam"), check=True, env=env,
                   capture_output=True)

    def stop_after(n_cams: int, sig: int) -> int:
        proc = subprocess.Popen(_cmd(manifest, b, "--from", "make_cam", "--to", "make_cam"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 600  # generous: on a loaded machine the process may need minutes to start
        while time.time() < deadline and len(list((b / "cams").glob("*.npz"))) < n_cams and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(sig)
        return proc.wait()

    # SIGTERM (a scheduler's pre-emption) ends the step as Ctrl-C does: recorded as failed, with its time
    assert stop_after(3, signal.SIGTERM) == 143
    st = json.loads((b / "status" / "make_cam.json").read_text())
    assert st["state"] == "failed" and st["error"] == "Terminated: SIGTERM (exit 143)" and st["wall_s"] > 0
    first_s = st["wall_s"]
    n_first = len(list((b / "cams").glob("*.npz")))
    stop_after(n_first + 3, signal.SIGKILL)  # SIGKILL leaves no record of its time
    n_before = len(list((b / "cams").glob("*.npz")))
    st = json.loads((b / "status" / "make_cam.json").read_text())
    assert st["state"] == "running" and st["sessions"] == 2 and st["first_started"] <= st["started"]
    first = st["first_started"]
    assert 0 < n_first < n_before < 24, "the kills must land in the middle of make_cam"
    subprocess.run(_cmd(manifest, b, "--from", "make_cam", "--to", "make_cam"), check=True, env=env,
                   capture_output=True)
    st = json.loads((b / "status" / "make_cam.json").read_text())
    assert st["state"] == "done" and st["reused"] >= n_before - 1
    # the step's time over its sessions: the SIGTERM session's and this one's; the SIGKILLed one's is unknown
    assert st["sessions"] == 3 and st["first_started"] == first
    assert st["wall_s_incomplete"] and st["wall_s"] == pytest.approx(
        first_s + st["session_wall_s"], abs=0.02)
    names_a = sorted(p.name for p in (a / "cams").glob("*.npz"))
    names_b = sorted(p.name for p in (b / "cams").glob("*.npz"))
    assert names_a == names_b and len(names_a) == 24
    for n in names_a:
        with np.load(a / "cams" / n) as za, np.load(b / "cams" / n) as zb:
            assert np.allclose(za["cam"].astype(np.float32), zb["cam"].astype(np.float32), atol=1e-2)
