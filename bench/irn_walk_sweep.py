"""Benchmark / model selection: random-walk length, beta and background value of make_sem_seg_labels, on GlaS train.

    python bench/irn_walk_sweep.py --protocol glas-gland --profile cpu      (after bench/irn_glas.py)

Reads the CAMs (cams/) and IRN boundary maps (irn/) of the run folder bench/work/cam_<protocol>.<profile> and,
for every (exp_times, beta), walks each GlaS **train** image once and scores every background value
(offset mode: the offset added to the walked background map; threshold mode: the constant background score)
against the train masks. The plain CAM (no walk) is scored the same way. Test images are never read.
Writes bench/results/irn_walk_sweep_<protocol>.<profile>.json with the best setting; the GlaS configs take
``sem_seg.exp_times`` / ``sem_seg.beta`` from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, cam_and_boundary, check, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--exp-times", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8])
    ap.add_argument("--betas", type=float, nargs="+", default=[10.0, 20.0])
    ap.add_argument("--name", default=None, help="result name (default irn_walk_sweep_<protocol>)")
    ap.add_argument("--values", type=float, nargs="+", default=None,
                    help="background offsets / thresholds to try (default: the full grid)")
    args = ap.parse_args()

    import numpy as np
    import torch
    from rich.progress import track

    from histowsss.config import load_config
    from histowsss.data.masks import load_class_mask
    from histowsss.evaluation.metrics import ConfusionMatrix
    from histowsss.steps.irn_common import background_id, cam_class_ids, cam_mode, presence
    from histowsss.steps.make_sem_seg_labels import gate_cams, labels_from_scores, walk_scores
    from histowsss.steps.common import samples_for

    run_path = ROOT / "bench" / "work" / f"cam_{args.protocol}.{args.profile}"
    if not (run_path / "irn").is_dir():
        raise SystemExit(f"{run_path}: run bench/irn_glas.py --protocol {args.protocol} first")
    cfg = load_config(str(run_path / "config.yaml"))
    mode, bg, ids = cam_mode(cfg), background_id(cfg), cam_class_ids(cfg)
    values = args.values or ([round(-0.4 + 0.05 * i, 2) for i in range(17)] if mode == "offset"
                             else [round(0.05 * i, 2) for i in range(1, 20)])
    samples = samples_for(cfg, cfg.data.train_splits)
    present = presence(cfg, samples)
    names = cfg.data.classes.names
    settings = [(0, 0.0)] + [(e, b) for e in args.exp_times if e > 0 for b in args.betas]
    cms = {s: [ConfusionMatrix(len(names)) for _ in values] for s in settings}
    t0 = time.time()
    for i, s in enumerate(track(samples, description="walk sweep (train)")):
        cam_norm, size, boundary = cam_and_boundary(run_path, s.name)
        boundary = torch.from_numpy(boundary)
        gt = load_class_mask(s, cfg.data)
        # the pipeline's patch-label gating (eval_cam.label_gating: patch), as make_sem_seg_labels applies it
        cam_norm, pres, allowed = gate_cams(cfg, s, cam_norm, present[i])
        cam = torch.from_numpy(cam_norm)
        for e, b in settings:
            # exp_times 0 = no walk: the CAMs with the same upsampling and normalisation
            got = walk_scores(cam, pres, ids, bg, mode, boundary, size, cfg.sem_seg.radius, b, max(e, 1),
                              propagate=e > 0)
            for k, v in enumerate(values):
                lab = (np.full(size, bg, np.uint8) if got is None
                       else labels_from_scores(got[0], got[1], bg, mode, v, allowed))
                cms[(e, b)][k].update(gt, lab)
    table = []
    for (e, b), row in cms.items():
        ms = [cm.summary(names)["miou"] for cm in row]
        k = int(np.argmax(ms))
        table.append({"exp_times": e, "beta": b, "best_value": values[k], "best_miou": ms[k], "curve": ms})
    base = table[0]
    best = max(table[1:], key=lambda r: r["best_miou"])
    ref = next((r for r in table if r["exp_times"] == 8 and r["beta"] == 10.0), None)
    metrics = {"mode": mode, "values": values, "no_walk": base, "best": best, "irn_default_e8_b10": ref,
               "table": [{k: v for k, v in r.items() if k != "curve"} for r in table], "curves": table,
               "seconds": round(time.time() - t0, 1)}
    gain = round(best["best_miou"] - base["best_miou"], 2)
    checks = [check("train_walk_best_minus_no_walk_miou", gain,
                    "reported (model selection on train; issue 3 target >= +8 is checked by irn_glas.py)", True)]
    path = write_result(args.name or f"irn_walk_sweep_{args.protocol}", args.profile, time.time() - t0,
                        {"run": str(run_path.relative_to(ROOT)), "radius": cfg.sem_seg.radius,
                         "label_gating": cfg.eval_cam.label_gating,
                         "note": "GlaS train only: chooses sem_seg.exp_times/beta; test never read"}, metrics, checks)
    print(json.dumps({"result": str(path), "table": metrics["table"], "best": {k: v for k, v in best.items()
                                                                                if k != "curve"}}, indent=2))


if __name__ == "__main__":
    main()
