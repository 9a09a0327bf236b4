"""Cost of train_seg's optimiser step: AdamW one tensor at a time (PyTorch's CPU default), multi-tensor (foreach)
and fused (``train_seg.fused_optimizer``, the default since stop 41).

    python bench/optimizer_step_cost.py --profile cpu        (gpu: the same on CUDA, glas-gland-gpu's crops)

The glas-gland profile's segmentation network (U-Net on lite0, random weights; the cost of a step does not depend
on them) on one batch of real GlaS train crops with random targets: ``--steps`` training steps per implementation
from the same start, after warm-up steps. Reports the best and median time of ``optimizer.step()`` alone and of the
whole step (forward, loss, backward, optimiser), the optimiser's share, and how far each run's weights end from the
one-tensor-at-a-time run's, beside how far training moved those (the fused kernel orders its float operations
otherwise, and Adam turns rounding differences of near-zero gradients into full steps, so two runs drift apart as
with another thread count), with the last losses; and the difference after one float32 step from the same start
(the update itself). Speed only; no quality.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_and_profile, seg_training_setup, write_result  # noqa: E402

IMPLEMENTATIONS = {"for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def measure(kind: str, profile_name: str, steps: int, warmup: int, amp_on: bool = True) -> tuple[dict, dict]:
    """Times of ``steps`` steps with AdamW implementation ``kind``, and the final weights (``amp_on=False``: in
    float32 whatever the profile says)."""
    import torch

    from histowsss.engine.device import autocast_bf16
    from histowsss.models.segnet import seg_loss

    setup = seg_training_setup("unet_lite0", profile_name, **IMPLEMENTATIONS[kind])
    device, net, x, target, opt = setup.device, setup.net, setup.x, setup.target, setup.opt
    amp = amp_on and setup.amp

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = {k: v.detach().float().cpu().clone() for k, v in net.named_parameters()}
    opt_t, step_t, losses = [], [], []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        with autocast_bf16(device, amp):
            logits = net(x)
        loss = seg_loss(logits, target, "ce")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t1 = time.perf_counter()
        opt.step()
        sync()
        t2 = time.perf_counter()
        losses.append(float(loss.detach()))
        if i >= warmup:
            opt_t.append(t2 - t1)
            step_t.append(t2 - t0)
    weights = {k: v.detach().float().cpu().clone() for k, v in net.named_parameters()}
    ms = lambda v: round(1000 * v, 2)  # noqa: E731
    moved = max(float((weights[k] - start[k]).abs().max()) for k in start)
    return ({"last_losses": [round(v, 5) for v in losses[-3:]], "max_abs_weight_change_in_training": moved,"optimizer_ms_best": ms(min(opt_t)), "optimizer_ms_median": ms(statistics.median(opt_t)),
             "step_ms_best": ms(min(step_t)), "step_ms_median": ms(statistics.median(step_t)),
             "optimizer_share_of_step_pct": round(100 * statistics.median(opt_t) / statistics.median(step_t), 1)},
            weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--name", default="optimizer_step_cost")
    args = ap.parse_args()

    import torch

    from histowsss.engine.optim import fused_supported

    t0 = time.time()
    results, weights = {}, {}
    for kind in IMPLEMENTATIONS:
        results[kind], weights[kind] = measure(kind, args.profile, args.steps, args.warmup)
        print(kind, results[kind], flush=True)
    ref = weights["for_loop"]
    for kind in ("foreach", "fused"):
        results[kind]["max_abs_weight_diff_vs_for_loop"] = float(max(
            (weights[kind][k] - ref[k]).abs().max() for k in ref))
        results[kind]["mean_abs_weight_diff_vs_for_loop"] = float(
            sum((weights[kind][k] - ref[k]).abs().sum() for k in ref) / sum(v.numel() for v in ref.values()))
    # one step from the same start in float32: the update itself differs by float rounding only
    one = {kind: measure(kind, args.profile, 1, 0, amp_on=False)[1] for kind in ("for_loop", "fused")}
    first_step_diff = float(max((one["fused"][k] - one["for_loop"][k]).abs().max() for k in one["for_loop"]))
    base, fused = results["for_loop"], results["fused"]
    saved = round(base["step_ms_median"] - fused["step_ms_median"], 2)
    metrics = {"implementations": results,
               "fused_step_time_saved_ms": saved,
               "fused_step_time_saved_pct": round(100 * saved / base["step_ms_median"], 1),
               "float32_first_step_max_abs_weight_diff_fused_vs_for_loop": first_step_diff,
               "fused_supported_here": fused_supported([torch.zeros(1)])}
    device, profile = device_and_profile(args.profile)
    ts = profile.train_seg
    path = write_result(args.name, args.profile, time.time() - t0,
                        {"network": "unet_lite0 (random weights)", "crop": ts.crop_size, "batch": ts.batch_size,
                         "cpu_amp": ts.cpu_amp, "steps": args.steps, "warmup": args.warmup,
                         "device": str(device), "threads": torch.get_num_threads()},
                        metrics, [])
    print(json.dumps({"result": str(path), **metrics}, indent=1))


if __name__ == "__main__":
    main()
