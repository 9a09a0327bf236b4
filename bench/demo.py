"""Benchmark: `histowsss demo` end to end (fresh run folder), timed; target <= 5 minutes on the CPU profile.

    python bench/demo.py --profile cpu
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    args = ap.parse_args()
    run = ROOT / "bench" / "work" / f"demo.{args.profile}"
    shutil.rmtree(run, ignore_errors=True)
    exe = Path(sys.executable).with_name("histowsss")
    t0 = time.time()
    proc = subprocess.run([str(exe), "demo", "--run", str(run)], cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"demo failed with exit code {proc.returncode}")
    steps = {p.stem: json.loads(p.read_text()).get("wall_s") for p in sorted((run / "status").glob("*.json"))}
    metrics = {"step_seconds": steps, "table": proc.stdout.strip().splitlines()[-40:]}
    for name in ("cam", "sem_seg", "seg"):
        p = run / "metrics" / f"{name}.json"
        if p.exists():
            metrics[f"{name}_metrics_file"] = str(p.relative_to(ROOT))
    cam = json.loads((run / "metrics" / "cam.json").read_text())
    metrics["cam_test"] = {"miou": cam["splits"]["test"]["predicted_gating"]["miou"],
                           "auc": cam["splits"]["test"]["classification"]["auc"]}
    checks = [check("demo_wall_s", round(wall, 1), "<= 300 s", wall <= 300)]
    path = write_result("demo", args.profile, wall, {"command": "histowsss demo"}, metrics, checks)
    print(json.dumps({"result": str(path), "checks": checks}, indent=2))


if __name__ == "__main__":
    main()
