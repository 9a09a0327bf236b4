"""bfloat16 and channels-last inference on the CPU, scored on GlaS train (no test image is read).

    python bench/inference_amp.py --protocol glas-gland --profile cpu

Needs a finished weak run folder (bench/work/cam_<protocol>.<profile>: train_cam, eval_cam and train_seg done).
On every train image it runs, side by side:

- the segmentation network's inference (eval_seg's: sliding window, TTA, scales, object clean-up) three ways:
  float32 with tiles in the default (channels-first) layout as before (``--nchw-images`` images only: it is the
  slow one), float32 channels-last, and bfloat16 autocast channels-last (``eval_seg.cpu_amp``);
- make_cam's CAM inference in float32 and under bfloat16 autocast (``make_cam.cpu_amp``).

It reports seconds per image, the pixels whose label differs from the float32 channels-last prediction, the
largest probability / normalised-CAM difference, and the train mIoU of each variant against the train masks
(segmentation: eval_seg's argmax + clean-up; CAM: eval_cam's label-gated CAM labels at the run's chosen background
value). These are the numbers the cpu_amp options are chosen on. Writes bench/results/inference_amp_<protocol>.<profile>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu"], default="cpu")
    ap.add_argument("--run", type=Path, default=None, help="run folder (default bench/work/cam_<protocol>.<profile>)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--nchw-images", type=int, default=8, help="images also run in the former channels-first layout")
    ap.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    t0 = time.time()

    import json

    import numpy as np
    import torch
    import yaml
    from rich.progress import track

    from histowsss.config import RunConfig
    from histowsss.data.loading import load_image
    from histowsss.data.masks import load_class_mask
    from histowsss.data.transforms import Normalizer
    from histowsss.engine.device import cpu_has_bf16
    from histowsss.engine.inference import multiscale_probs
    from histowsss.engine.run_dir import RunDir
    from histowsss.evaluation.cam_labels import normalize_cams, upsample_cam
    from histowsss.evaluation.metrics import ConfusionMatrix
    from histowsss.steps import eval_cam, eval_seg, segnet_io, train_seg
    from histowsss.steps.common import load_cam_network, output_classes, samples_for
    from histowsss.steps.make_cam import STRIDE, image_cam
    from histowsss.data.crops import image_targets

    run_path = args.run or ROOT / "bench" / "work" / f"cam_{args.protocol}.{args.profile}"
    base = RunConfig.model_validate(yaml.safe_load((run_path / "config.yaml").read_text()))
    names = base.data.classes.names
    dev = torch.device("cpu")
    samples = samples_for(base, [args.split])
    if args.limit:
        samples = samples[: args.limit]
    variants = {"fp32_nchw": (False, False), "fp32_cl": (False, True), "bf16_cl": (True, True)}
    cam_info = json.loads((run_path / "metrics" / "cam.json").read_text())
    mode, value = eval_cam.cam_mode(base), cam_info["chosen_value"]

    seg_model = segnet_io.load_segnet(base, run_path, train_seg.tag(base), dev)
    seg_norm = Normalizer(seg_model.mean, seg_model.std)
    cam_model = load_cam_network(base, RunDir(run_path, base), dev)
    if base.backbone.channels_last:
        cam_model = cam_model.to(memory_format=torch.channels_last)
    cam_norm = Normalizer(cam_model.backbone.mean, cam_model.backbone.std)
    keep = [base.data.classes.index(n) for n in output_classes(base)]
    targets = image_targets(samples, base.data)[:, keep]

    seg_cm = {k: ConfusionMatrix(len(names)) for k in variants}
    seg_secs = {k: [] for k in variants}
    seg_diff = {k: {"pixels": 0, "changed": 0, "max_prob_diff": 0.0} for k in variants}
    cam_items = {"fp32": [], "bf16": []}
    cam_secs = {"fp32": [], "bf16": []}
    cam_max_diff = 0.0
    for i, s in enumerate(track(samples, description="inference_amp")):
        img = load_image(s.image, base.data)
        gt = load_class_mask(s, base.data)
        probs = {}
        for k, (amp, cl) in variants.items():
            if k == "fp32_nchw" and i >= args.nchw_images:
                continue
            cfg = base.model_copy(update={"eval_seg": base.eval_seg.model_copy(update={"cpu_amp": amp})})
            t = time.perf_counter()
            ev = cfg.eval_seg
            p = multiscale_probs(seg_model, img, seg_norm, ev.scales,
                                 tile=ev.tile_size, overlap=ev.overlap, blend=ev.blend, tta=ev.tta,
                                 batch_size=ev.batch_size, device=dev, size_divisor=seg_model.size_divisor,
                                 cpu_amp=amp, channels_last=cl)
            seg_secs[k].append(time.perf_counter() - t)
            probs[k] = p
            seg_cm[k].update(gt, eval_seg.labels_from_probs(p, cfg))
        ref = probs["fp32_cl"].argmax(0)
        for k, p in probs.items():
            d = seg_diff[k]
            d["pixels"] += ref.size
            d["changed"] += int((p.argmax(0) != ref).sum())
            d["max_prob_diff"] = max(d["max_prob_diff"], float(np.abs(p - probs["fp32_cl"]).max()))
        cams = {}
        for k, amp in (("fp32", False), ("bf16", True)):
            cfg = base.model_copy(update={"make_cam": base.make_cam.model_copy(update={"cpu_amp": amp})})
            t = time.perf_counter()
            cam, logits = image_cam(cam_model, img, cfg, cam_norm, dev)
            cam_secs[k].append(time.perf_counter() - t)
            full = normalize_cams(upsample_cam(cam.astype(np.float16).astype(np.float32), gt.shape, STRIDE))
            cams[k] = full
            cam_items[k].append({"name": s.name, "cam": full, "probs": 1 / (1 + np.exp(-logits)),
                                 "target": targets[i], "gt": gt})
        cam_max_diff = max(cam_max_diff, float(np.abs(cams["fp32"] - cams["bf16"]).max()))

    def mean(v):
        return round(float(np.mean(v)), 3) if v else None

    seg = {k: {"seconds_per_image": mean(seg_secs[k]), "images": len(seg_secs[k]),
               "train_miou": seg_cm[k].summary(names)["miou"] if k != "fp32_nchw" else None,
               "changed_pixels_pct_vs_fp32_cl": round(100 * seg_diff[k]["changed"] / max(seg_diff[k]["pixels"], 1), 4),
               "max_prob_diff_vs_fp32_cl": round(seg_diff[k]["max_prob_diff"], 5)} for k in variants}
    cam_miou = {k: eval_cam.score(cam_items[k], base, mode, value, "labels").summary(names)["miou"]
                for k in cam_items}
    cam = {k: {"seconds_per_image": mean(cam_secs[k]), "train_miou": cam_miou[k]} for k in cam_items}
    cam["max_normalised_cam_diff"] = round(cam_max_diff, 5)
    n_seg_first = len(seg_secs["fp32_nchw"])
    speed_bf16 = mean(seg_secs["fp32_nchw"]) / mean(seg_secs["bf16_cl"][:n_seg_first])
    metrics = {"split": args.split, "images": len(samples), "cpu_has_bf16": cpu_has_bf16(), "seg": seg, "cam": cam,
               "seg_speedup_bf16_cl_vs_fp32_nchw_same_images": round(speed_bf16, 2),
               "seg_speedup_fp32_cl_vs_fp32_nchw_same_images":
                   round(mean(seg_secs["fp32_nchw"]) / mean(seg_secs["fp32_cl"][:n_seg_first]), 2),
               "cam_speedup_bf16_vs_fp32": round(mean(cam_secs["fp32"]) / mean(cam_secs["bf16"]), 2),
               "notes": ["train images and train masks only; test ground truth is not read",
                         "CAM labels: eval_cam's label gating at the run's chosen background value "
                         f"({mode} {value}); CAMs rounded to float16 as make_cam stores them"]}
    checks = [check("bf16 segmentation train mIoU within 0.2 of float32", seg["bf16_cl"]["train_miou"],
                    f">= {seg['fp32_cl']['train_miou']} - 0.2",
                    seg["bf16_cl"]["train_miou"] >= seg["fp32_cl"]["train_miou"] - 0.2),
              check("bf16 CAM train mIoU within 0.2 of float32", cam["bf16"]["train_miou"],
                    f">= {cam['fp32']['train_miou']} - 0.2", cam["bf16"]["train_miou"] >= cam["fp32"]["train_miou"] - 0.2)]
    config = {"run": str(run_path.relative_to(ROOT)) if run_path.is_relative_to(ROOT) else str(run_path),
              "eval_seg": base.eval_seg.model_dump(mode="json"), "make_cam": base.make_cam.model_dump(mode="json"),
              "nchw_images": n_seg_first, "threads": torch.get_num_threads()}
    path = write_result(args.name or f"inference_amp_{args.protocol}", args.profile, time.time() - t0, config,
                        metrics, checks)
    print(json.dumps(metrics, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
