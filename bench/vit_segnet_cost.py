"""Benchmark: what a vision-transformer encoder (a pathology foundation model's architecture) costs the final
segmentation network, against the default U-Net on lite0.

    python bench/vit_segnet_cost.py --profile cpu

Each network is built as train_seg builds it (:func:`histowsss.models.segnet.build_segnet`) with the glas-gland
profile's train_seg / eval_seg settings, and timed on real GlaS data:

- ``train_step_s``: one optimiser step (forward, loss, backward, AdamW step) on a batch of ``train_seg.batch_size``
  random crops of ``train_seg.crop_size`` px cut from GlaS train images, under the profile's autocast setting, with
  the encoder fine-tuned (the default) or kept frozen (``train_seg.freeze_encoder``);
- ``infer_s``: eval_seg's inference of one GlaS image (775 x 522): the sliding window at the profile's tile size,
  overlap, flip TTA and scales, bfloat16 as the profile sets it.

DPT runs on ViT-B/16 (Phikon's architecture) and ViT-L/16 with LayerScale (UNI's), with smp's decoder widths and
with a slim decoder (``train_seg.decoder_channels: [96, 192, 384, 384, 128]``). The weights are random (cost
only; no foundation model's weights are reachable here). Each time is the fastest of ``--repeat`` runs after a
warm-up. The estimates multiply by the profile's counts (85 train images x ``crops_per_image`` crops an epoch, its
epochs and members; 80 test images). No issue sets a target here, so there are no checks.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (SEGNETS, best_time, device_and_profile, glas_train_crops, seg_train_step,  # noqa: E402
                     write_result)

NETWORKS = {  # name: train_seg settings
    **SEGNETS,
    # DPT's decoder at about a third of its default widths (256, 512, 1024, 1024; fusion 256)
    "dpt_vit_base_slim": {"architecture": "dpt", "encoder": "vit_base_patch16_224", "encoder_weights": "none",
                          "decoder_channels": [96, 192, 384, 384, 128]},
    "dpt_vit_large_slim": {"architecture": "dpt", "encoder": "vit_large_patch16_224", "encoder_weights": "none",
                           "encoder_model_kwargs": {"init_values": 1e-5}, "decoder_channels": [96, 192, 384, 384, 128]},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS))
    args = ap.parse_args()
    import torch

    from histowsss.data.transforms import Normalizer
    from histowsss.engine.device import bf16_enabled
    from histowsss.engine.inference import multiscale_probs
    from histowsss.models.segnet import build_segnet

    t0 = time.time()
    device, profile = device_and_profile(args.profile)
    ts, es = profile.train_seg, profile.eval_seg
    c = ts.crop_size
    crops, first_image, rng = glas_train_crops(c, ts.batch_size)
    batch_u8 = torch.from_numpy(crops)
    target = torch.from_numpy(rng.integers(0, 2, (ts.batch_size, c, c))).to(device)
    train_amp = bf16_enabled(device, ts.amp, ts.cpu_amp, "train_seg.cpu_amp", warn=False)
    infer_amp = bf16_enabled(device, ts.amp, es.cpu_amp, "eval_seg.cpu_amp", warn=False)
    metrics: dict = {"crop": c, "batch": ts.batch_size, "train_bf16": train_amp, "infer_bf16": infer_amp,
                     "tile": es.tile_size, "scales": es.scales, "tta": es.tta, "threads": torch.get_num_threads(),
                     "device": str(device), "networks": {}}
    crops_per_epoch = 85 * ts.crops_per_image
    for name in args.networks:
        row: dict = {}
        for frozen in (False, True):
            torch.manual_seed(0)
            net = build_segnet(ts.model_copy(update=NETWORKS[name]), 2)
            if frozen:
                net.freeze_encoder()
            net = net.to(device).to(memory_format=torch.channels_last)
            norm = Normalizer(net.mean, net.std)
            x = norm(batch_u8.to(device)).contiguous(memory_format=torch.channels_last)
            opt = torch.optim.AdamW(net.param_groups(ts.lr, ts.encoder_lr_mult), weight_decay=ts.weight_decay)
            net.train()

            s = best_time(lambda: seg_train_step(net, x, target, opt, device, train_amp), args.repeat)
            key = "frozen" if frozen else "fine_tuned"
            epoch_min = crops_per_epoch / ts.batch_size * s / 60
            row[key] = {"train_step_s": round(s, 3), "crops_per_s": round(ts.batch_size / s, 2),
                        "epoch_min": round(epoch_min, 1),
                        "train_seg_min": round(epoch_min * ts.epochs * ts.members, 1)}
            if not frozen:
                row["parameters_m"] = round(sum(p.numel() for p in net.parameters()) / 1e6, 1)
                net.eval()

                def infer() -> None:
                    with torch.no_grad():
                        multiscale_probs(net, first_image, norm, es.scales, tile=es.tile_size, overlap=es.overlap,
                                         blend=es.blend, tta=es.tta, batch_size=es.batch_size, device=device,
                                         size_divisor=net.size_divisor, amp=infer_amp and device.type == "cuda",
                                         cpu_amp=infer_amp and device.type == "cpu")

                row["infer_s"] = round(best_time(infer, args.repeat), 2)
                row["eval_80_test_min"] = round(80 * row["infer_s"] * ts.members / 60, 1)
            del net, opt
        metrics["networks"][name] = row
        print(name, row, flush=True)
    metrics["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    path = write_result("vit_segnet_cost", args.profile, time.time() - t0,
                        {"weights": "none (random: cost only)", "images": "glas train_1..4.png",
                         "train_seg": {"crop_size": c, "batch_size": ts.batch_size, "epochs": ts.epochs,
                                       "members": ts.members, "crops_per_image": ts.crops_per_image},
                         "eval_seg": {"tile_size": es.tile_size, "overlap": es.overlap, "tta": es.tta,
                                      "scales": es.scales}, "repeat": args.repeat, "networks": NETWORKS},
                        metrics, [])
    print(path)


if __name__ == "__main__":
    main()
