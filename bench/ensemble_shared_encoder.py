"""Benchmark: what sharing one frozen encoder saves a seed ensemble at inference (``SegEnsemble``).

    python bench/ensemble_shared_encoder.py --profile cpu

A seed ensemble (``train_seg.members``) trained with ``train_seg.freeze_encoder`` holds the same encoder weights in
every member; ``SegEnsemble`` then holds that encoder once and, inside one forward, runs it once per input and hands
its output to every member's decoder (docs/segmentation.md). Here eval_seg's inference of one GlaS image (775 x 522,
the glas-gland profile's sliding window, flip TTA, scales and bfloat16 setting) is timed for ensembles of 2 and 3
members, with the encoder run once (shared) and once per member (the ensemble as before), on the same object, and
the two outputs compared. Networks: U-Net on lite0 with its ImageNet weights, and DPT on ViT-B/16 with random weights
copied into every member (cost only: no foundation model's weights are reachable here). Each time is the fastest of
``--repeat`` runs after a warm-up. No issue sets a target, so there are no checks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GLAS, best_time, device_and_profile, write_result  # noqa: E402
NETWORKS = {  # name: train_seg settings
    "unet_lite0": {"architecture": "unet", "encoder": "tf_efficientnet_lite0", "encoder_weights": "imagenet"},
    "dpt_vit_base": {"architecture": "dpt", "encoder": "vit_base_patch16_224", "encoder_weights": "none"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--members", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS))
    args = ap.parse_args()
    import numpy as np
    import torch
    from PIL import Image

    from histowsss.data.transforms import Normalizer
    from histowsss.engine.device import bf16_enabled
    from histowsss.engine.inference import multiscale_probs
    from histowsss.models.segnet import SegEnsemble, build_segnet

    t0 = time.time()
    device, profile = device_and_profile(args.profile)
    ts, es = profile.train_seg, profile.eval_seg
    image = np.asarray(Image.open(GLAS / "images" / "testA_1.png").convert("RGB"))
    amp = bf16_enabled(device, ts.amp, es.cpu_amp, "eval_seg.cpu_amp", warn=False)
    metrics: dict = {"image_hw": list(image.shape[:2]), "bf16": amp, "tile": es.tile_size, "scales": es.scales,
                     "tta": es.tta, "threads": torch.get_num_threads(), "device": str(device), "networks": {}}
    for name in args.networks:
        row: dict = {}
        for n in args.members:
            members = []
            for seed in range(n):
                torch.manual_seed(seed)  # each member's decoder its own draw
                m = build_segnet(ts.model_copy(update=NETWORKS[name]), 2)
                if members:  # the same (frozen, pretrained) encoder in every member
                    m.net.encoder.load_state_dict(members[0].net.encoder.state_dict())
                m.freeze_encoder()
                members.append(m.eval())
            ens = SegEnsemble(members).to(device).to(memory_format=torch.channels_last).eval()
            if ens.shared is None:
                raise SystemExit(f"{name}: the members' encoders were not shared")
            shared = ens.shared
            norm = Normalizer(ens.mean, ens.std)
            outs: dict = {}

            def infer(key: str) -> None:
                with torch.no_grad():
                    outs[key] = multiscale_probs(ens, image, norm, es.scales, tile=es.tile_size, overlap=es.overlap,
                                                 blend=es.blend, tta=es.tta, batch_size=es.batch_size, device=device,
                                                 size_divisor=ens.size_divisor, amp=amp and device.type == "cuda",
                                                 cpu_amp=amp and device.type == "cpu")

            once = best_time(lambda: infer("shared"), args.repeat)
            ens.shared = None  # the same modules, the encoder run by every member as before
            each = best_time(lambda: infer("per_member"), args.repeat)
            ens.shared = shared
            diff = float(np.abs(np.asarray(outs["shared"], np.float32) - np.asarray(outs["per_member"],
                                                                                  np.float32)).max())
            row[f"members_{n}"] = {"infer_s_encoder_per_member": round(each, 2), "infer_s_shared": round(once, 2),
                                   "saved_pct": round(100 * (1 - once / each), 1), "max_abs_prob_diff": diff,
                                   "parameters_m": round(sum(p.numel() for p in ens.parameters()) / 1e6, 1)}
            print(name, n, row[f"members_{n}"], flush=True)
            del ens, members
        metrics["networks"][name] = row
    path = write_result("ensemble_shared_encoder", args.profile, time.time() - t0,
                        {"image": "glas testA_1.png", "eval_seg": {"tile_size": es.tile_size, "overlap": es.overlap,
                                                                   "tta": es.tta, "scales": es.scales},
                         "repeat": args.repeat, "members": args.members, "networks": NETWORKS}, metrics, [])
    print(path)


if __name__ == "__main__":
    main()
