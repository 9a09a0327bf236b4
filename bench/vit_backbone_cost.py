"""Benchmark: what a vision-transformer backbone (a pathology foundation model's architecture) costs per GlaS image.

    python bench/vit_backbone_cost.py --profile cpu

The CAM stage's two backbone passes, timed on one real GlaS image (775 x 522) for the default CNN and for the
architectures of two foundation models: ViT-B/16 (Phikon's size) and ViT-L/16 with LayerScale (UNI's), each as
:class:`histowsss.models.backbone.StagedBackbone` builds it (frozen, 16-px token grid):

- ``cache_s``: one forward at scale 1 (train_cam's trunk cache makes ``train_cam.cache_copies`` of these per
  training image, once);
- ``make_cam_s``: the forwards make_cam runs per image with the glas-gland profile (scales 1.0, 1.5, 2.0, each with
  its flip, as a batch of two), in float32 and under bfloat16 autocast (``make_cam.cpu_amp``).

The weights are random (``backbone.weights: none``): the cost does not depend on them, and no foundation model's
weights are reachable from this machine. Each time is the fastest of ``--repeat`` runs after a warm-up. The stage
estimates multiply by the glas-gland profile's counts (85 train images x 4 cached copies; 165 images through
make_cam). No issue sets a target here, so there are no checks: it tells a user what choosing such a backbone costs.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, best_time, write_result  # noqa: E402

GLAS = ROOT.parent / "shared" / "data" / "glas"
BACKBONES = {
    "tf_efficientnet_lite0": {},
    "vit_base_patch16_224": {},
    "vit_large_patch16_224": {"init_values": 1e-5},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    args = ap.parse_args()
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from histowsss.config import BackboneConfig, load_config
    from histowsss.data.transforms import Normalizer
    from histowsss.models.backbone import StagedBackbone

    t0 = time.time()
    device = torch.device("cuda" if args.profile == "gpu" and torch.cuda.is_available() else "cpu")
    profile = load_config("glas-gland")
    scales, copies = profile.make_cam.scales, profile.train_cam.cache_copies
    img = np.asarray(Image.open(GLAS / "images" / "train_1.png").convert("RGB"))
    metrics: dict = {"image": [int(img.shape[0]), int(img.shape[1])], "scales": scales, "threads":
                     torch.get_num_threads(), "device": str(device), "backbones": {}}
    for name in args.backbones:
        torch.manual_seed(0)
        bb = StagedBackbone(BackboneConfig(name=name, weights="none", model_kwargs=BACKBONES.get(name, {})))
        bb = bb.eval().to(device).to(memory_format=torch.channels_last)
        x = Normalizer(bb.mean, bb.std)(torch.from_numpy(img.copy())[None]).to(device)
        params = sum(p.numel() for p in bb.parameters())

        def forward(batch: torch.Tensor, amp: bool) -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                bb(batch.contiguous(memory_format=torch.channels_last))
            if device.type == "cuda":
                torch.cuda.synchronize()

        def make_cam(amp: bool) -> None:
            for s in scales:
                xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
                forward(torch.cat([xs, xs.flip(-1)]), amp)

        row = {"parameters_m": round(params / 1e6, 1),
               "cache_s": round(best_time(lambda: forward(x, False), args.repeat), 3),
               "cache_bf16_s": round(best_time(lambda: forward(x, True), args.repeat), 3),
               "make_cam_s": round(best_time(lambda: make_cam(False), args.repeat), 2),
               "make_cam_bf16_s": round(best_time(lambda: make_cam(True), args.repeat), 2)}
        row["stage_estimate_min"] = {
            "train_cam_cache_85x%d" % copies: round(85 * copies * row["cache_s"] / 60, 1),
            "make_cam_165_bf16": round(165 * row["make_cam_bf16_s"] / 60, 1)}
        metrics["backbones"][name] = row
        print(name, row, flush=True)
        del bb
    metrics["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    base = metrics["backbones"].get("tf_efficientnet_lite0")
    if base:
        metrics["make_cam_bf16_x_lite0"] = {n: round(r["make_cam_bf16_s"] / base["make_cam_bf16_s"], 1)
                                           for n, r in metrics["backbones"].items()}
    path = write_result("vit_backbone_cost", args.profile, time.time() - t0,
                        {"weights": "none (random: cost only)", "image": "glas train_1.png",
                         "make_cam": {"scales": scales, "flip": True}, "train_cam.cache_copies": copies,
                         "repeat": args.repeat},
                        metrics, [])
    print(path)


if __name__ == "__main__":
    main()
