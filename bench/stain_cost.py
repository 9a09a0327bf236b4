"""Cost and effect of stain normalisation (``data.stain_normalization``) on the GlaS images, no network.

    python bench/stain_cost.py --profile cpu

Every GlaS image (train, testA, testB; pixels only, no mask is read) is normalised with Reinhard and with Macenko to
their default references. Reports the time per image of each (best of ``--repeat``; Macenko also with a given
source estimate, the path of a slide's tiles, which skips the estimate), and how far the images' colours spread
before and after: the standard deviation over images of each image's mean LAB colour of its tissue (L < 92), per
split and over all, and the distance between the split means (testB is the split the networks do worst on). No
target, no checks: the pipeline's quality with each method is in ``seg_crossval_{reinhard,macenko}_glas-gland``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GLAS, best_time, write_result  # noqa: E402

from histowsss.data.io import read_rgb  # noqa: E402
from histowsss.data.stain import lab_stats, macenko, macenko_stains, reinhard, stain_normalizer  # noqa: E402


def spread(means: dict[str, list[np.ndarray]]) -> dict:
    """Per split and over all: std over images of the mean LAB colour, and the split means."""
    out = {}
    every = np.concatenate([np.stack(v) for v in means.values()])
    for split, v in [*means.items(), ("all", list(every))]:
        a = np.stack(v)
        out[split] = {"images": len(a), "mean_lab": [round(float(x), 2) for x in a.mean(0)],
                      "std_over_images_lab": [round(float(x), 2) for x in a.std(0)]}
    centre = {s: np.stack(v).mean(0) for s, v in means.items()}
    for test in ("testA", "testB"):
        if test in centre and "train" in centre:
            out[f"distance_{test}_to_train_lab"] = round(float(np.linalg.norm(centre[test] - centre["train"])), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["cpu"], default="cpu")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per image and method (the best counts)")
    ap.add_argument("--limit", type=int, default=None, help="first N images only (a quick look)")
    args = ap.parse_args()

    t0 = time.time()
    with open(GLAS / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[: args.limit]
    methods = {m: stain_normalizer(m) or (lambda img: img) for m in ("none", "reinhard", "macenko")}
    means: dict[str, dict[str, list[np.ndarray]]] = {m: {} for m in methods}
    times: dict[str, list[float]] = {"reinhard": [], "macenko": [], "macenko_given_source": []}
    for i, row in enumerate(rows):
        img = read_rgb(GLAS / row["image"])
        h, w = img.shape[:2]
        split = row["split"]  # train, testA, testB
        for m, fn in methods.items():
            out = fn(img)
            means[m].setdefault(split, []).append(lab_stats(out)[0])
        times["reinhard"].append(best_time(lambda: reinhard(img), args.repeat))
        times["macenko"].append(best_time(lambda: macenko(img), args.repeat))
        src = macenko_stains(img)
        times["macenko_given_source"].append(best_time(lambda: macenko(img, source=src), args.repeat))
        if i % 20 == 0:
            print(f"{i + 1}/{len(rows)} images", flush=True)
    metrics = {
        "images": len(rows),
        "image_size": [h, w],
        "seconds_per_image": {k: {"median": round(float(np.median(v)), 4), "max": round(float(np.max(v)), 4),
                                  "total": round(float(np.sum(v)), 2)} for k, v in times.items()},
        "colour_spread": {m: spread(v) for m, v in means.items()},
    }
    config = {"repeat": args.repeat, "limit": args.limit, "references": "the methods' defaults (data/stain.py)"}
    path = write_result("stain_cost", args.profile, time.time() - t0, config, metrics, [])
    print(json.dumps({"result": str(path), **{k: metrics[k] for k in ("seconds_per_image",)},
                      "spread_all": {m: s["all"]["std_over_images_lab"] for m, s in metrics["colour_spread"].items()},
                      "testB_to_train": {m: s.get("distance_testB_to_train_lab")
                                         for m, s in metrics["colour_spread"].items()}}, indent=2))


if __name__ == "__main__":
    main()
