"""Benchmark: what ``train_seg.grad_checkpointing`` saves in training memory, and what it costs in time.

    python bench/grad_checkpointing_memory.py --profile cpu
    python bench/grad_checkpointing_memory.py --profile cpu --crop 320 --name grad_checkpointing_memory_crop320

One train_seg step (forward, loss, backward, AdamW step) of the glas-gland profile's batch of crops, with the encoder
fine-tuned, with and without timm's gradient checkpointing of the encoder. On the CPU each setting runs in a fresh
process; its memory is the peak resident set of the first step less the resident set before it (the model built,
the batch cut: so the gradients, the AdamW state and the activations; the peak is reset before the step through
Linux's /proc/self/clear_refs, else ``ru_maxrss``), and the peak of the later steps above the resident set the first
left (the activations' share, but the allocator keeps freed memory, so it is noisy); on a GPU,
``torch.cuda.max_memory_allocated`` over the steps. The time is
the fastest of ``--repeat`` steps after a warm-up. Networks: U-Net on lite0, DPT on ViT-B/16 and ViT-L/16 (random
weights: memory and time do not depend on them). The loss of the first step is compared between the two settings
(the same weights and batch: the gradients, and so the losses after a step, are the same). No issue sets a target,
so there are no checks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SEGNETS, seg_train_step, seg_training_setup, write_result  # noqa: E402

NETWORKS = SEGNETS


def child(name: str, checkpointing: bool, profile_name: str, repeat: int, crop: int | None) -> dict:
    """One setting, measured in this process: peak memory over the steps, best step time, the losses."""
    import resource

    import torch

    setup = seg_training_setup(name, profile_name, crop=crop, checkpointing=checkpointing)
    device, ts, net, x, target, opt, amp = (setup.device, setup.ts, setup.net, setup.x, setup.target, setup.opt,
                                            setup.amp)
    c = ts.crop_size
    losses, times = [], []
    # the peak resident set is reset right before the steps (Linux: /proc/self/clear_refs), so it counts no peak from
    # before them (nor ru_maxrss's, which a child inherits across exec from a large parent); elsewhere ru_maxrss
    reset = device.type == "cpu" and _reset_peak()
    before = _status_kib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start_alloc = torch.cuda.memory_allocated()
    first_peak = steady = None
    for i in range(repeat + 1):
        if i == 1 and reset:  # gradients and optimiser state now exist
            first_peak = _status_kib("VmHWM")
            _reset_peak()
            steady = _status_kib("VmRSS")
        t = time.perf_counter()
        losses.append(seg_train_step(net, x, target, opt, device, amp))
        times.append(time.perf_counter() - t)
    out: dict = {}
    if device.type == "cuda":
        out["peak_mib_over_model"] = round((torch.cuda.max_memory_allocated() - start_alloc) / 2**20)
    else:
        peak = first_peak if first_peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_mib_over_model"] = round((peak - before) / 1024)
        if steady is not None:  # the peak of the later steps above what the first left (activations, mostly)
            out["step_peak_mib_over_steady"] = round((_status_kib("VmHWM") - steady) / 1024)
    return {"step_s": round(min(times[1:]), 3), **out, "losses": losses, "bf16": amp, "crop": c,
            "batch": ts.batch_size}


def _status_kib(key: str) -> int:
    """A /proc/self/status memory field (kiB)."""
    import re

    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak() -> bool:
    """Reset the process's peak resident set (Linux: /proc/self/clear_refs); False where that cannot be done."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS))
    ap.add_argument("--crop", type=int, default=None, help="crop size (default: the profile's train_seg.crop_size)")
    ap.add_argument("--name", default="grad_checkpointing_memory", help="result name")
    ap.add_argument("--child", nargs=2, metavar=("NETWORK", "ON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], args.child[1] == "1", args.profile, args.repeat,
                                           args.crop)))
        return
    t0 = time.time()
    metrics: dict = {"networks": {}}
    for name in args.networks:
        row = {}
        for on in (False, True):
            cmd = [sys.executable, __file__, "--profile", args.profile, "--repeat", str(args.repeat),
                   "--child", name, "1" if on else "0"] + (["--crop", str(args.crop)] if args.crop else [])
            res = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
            if res.returncode != 0 or line is None:
                raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
            row["checkpointing" if on else "plain"] = json.loads(line[len("RESULT "):])
        p, q = row["plain"], row["checkpointing"]
        row["memory_saved_pct"] = round(100 * (1 - q["peak_mib_over_model"] / max(p["peak_mib_over_model"], 1)), 1)
        if "step_peak_mib_over_steady" in p and "step_peak_mib_over_steady" in q:
            row["step_peak_saved_pct"] = round(100 * (1 - q["step_peak_mib_over_steady"]
                                                      / max(p["step_peak_mib_over_steady"], 1)), 1)
        row["time_added_pct"] = round(100 * (q["step_s"] / p["step_s"] - 1), 1)
        row["first_loss_abs_diff"] = abs(p["losses"][0] - q["losses"][0])
        row["second_loss_abs_diff"] = abs(p["losses"][1] - q["losses"][1])
        metrics["networks"][name] = row
        print(name, {k: v for k, v in row.items()}, flush=True)
    path = write_result(args.name, args.profile, time.time() - t0,
                        {"weights": "none (random: memory and time only)", "images": "glas train_1..4.png",
                         "repeat": args.repeat, "crop": args.crop, "networks": NETWORKS}, metrics, [])
    print(path)


if __name__ == "__main__":
    main()
