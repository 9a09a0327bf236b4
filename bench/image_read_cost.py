"""Benchmark: the image and mask readers of now against those of an earlier commit, on every GlaS image.

Usage::

    python bench/image_read_cost.py --profile cpu [--baseline 227c29b] [--repeats 3]

Stop 44 hardened ``histowsss.data.io`` (TIFF colour spaces, pixel limits read from the header, palette masks taken
for images). A reader runs for every image of every step, so this checks that nothing changed for real data: every
GlaS image (``read_rgb``), mask and instance mask (``read_mask``) read by both versions must give the same array
(dtype, shape, values), and the time per file is compared (median over the files of the best of ``--repeats``
interleaved reads, so both versions meet the same cache and load). The earlier reader is taken from git
(``git show <baseline>:src/histowsss/data/io.py``) and imported on its own. Writes
``bench/results/image_read_cost.<profile>.json``; no target is set by an issue, so ``checks`` holds the equality.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_result  # noqa: E402

GLAS = ROOT.parent / "shared" / "data" / "glas"


def load_baseline(commit: str):
    """The module ``histowsss.data.io`` as it was at ``commit``, imported under another name."""
    text = subprocess.run(["git", "show", f"{commit}:src/histowsss/data/io.py"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"io_{commit}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"io_{commit}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def best_time(fn, path: Path, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn(path)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--baseline", default="227c29b", help="the commit whose reader is compared (stop 43's)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import csv

    from histowsss.data import io as new

    old = load_baseline(args.baseline)
    with open(GLAS / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    t_all = time.perf_counter()
    kinds = {"image": ("read_rgb", [GLAS / r["image"] for r in rows]),
             "mask": ("read_mask", [GLAS / r["mask"] for r in rows]),
             "instance_mask": ("read_mask", [GLAS / r["mask_cc"] for r in rows if r.get("mask_cc")])}
    metrics: dict = {"files": {}, "different_arrays": {}, "ms_per_file_median": {}, "ratio_now_over_baseline": {}}
    checks = []
    for kind, (fn_name, files) in kinds.items():
        f_new, f_old = getattr(new, fn_name), getattr(old, fn_name)
        different = [p.name for p in files if not _same(f_new(p), f_old(p))]
        t_new, t_old = [], []
        for p in files:  # interleaved: both versions meet the same page cache and machine load
            t_old.append(best_time(f_old, p, args.repeats))
            t_new.append(best_time(f_new, p, args.repeats))
        ms_new, ms_old = 1000 * statistics.median(t_new), 1000 * statistics.median(t_old)
        metrics["files"][kind] = len(files)
        metrics["different_arrays"][kind] = different
        metrics["ms_per_file_median"][kind] = {"now": round(ms_new, 2), "baseline": round(ms_old, 2)}
        metrics["ratio_now_over_baseline"][kind] = round(ms_new / ms_old, 3)
        checks.append(check(f"{kind}s read the same as at {args.baseline}", len(different), "0 files differ",
                            not different))
        print(kind, len(files), "files;", len(different), "differ;", f"{ms_new:.2f} ms now vs {ms_old:.2f} ms")
    config = {"baseline": args.baseline, "repeats": args.repeats, "data": "../shared/data/glas (all 165 rows)",
              "functions": {k: v[0] for k, v in kinds.items()}}
    print(write_result("image_read_cost", args.profile, time.perf_counter() - t_all, config, metrics, checks))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))


if __name__ == "__main__":
    main()
