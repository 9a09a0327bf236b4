"""Shared benchmark helpers: result JSON layout, machine description, commit id."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def commit() -> str:
    """Short commit of the checkout (``+dirty`` with local changes outside bench/results); $HISTOWSSS_COMMIT where no .git travels."""
    if os.environ.get("HISTOWSSS_COMMIT"):
        return os.environ["HISTOWSSS_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        # results written by earlier benches of the same session do not make the code dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/results"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except Exception:
        return "uncommitted"


def machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    return f"{platform.node()} {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {dev}"


def check(name: str, value: Any, target: str, met: bool | None) -> dict:
    return {"name": name, "value": value, "target": target, "met": bool(met) if met is not None else False}


def write_result(name: str, profile: str, wall_s: float, config: dict, metrics: dict, checks: list[dict]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.{profile}.json"
    doc = {"name": name, "profile": profile, "command": " ".join([Path(sys.executable).name] + sys.argv),
           "commit": commit(), "machine": machine(), "wall_s": round(wall_s, 1), "config": config,
           "metrics": metrics, "checks": checks}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def cam_and_boundary(run_path: Path, name: str):
    """(max-normalised CAMs (K, h, w) float32, image size (H, W), IRN boundary map (h, w) float32) of one image of a
    finished run folder (cams/ of make_cam, irn/ of make_sem_seg_labels)."""
    import numpy as np

    from histowsss.evaluation.cam_labels import normalize_cams

    with np.load(run_path / "cams" / f"{name}.npz") as z:
        cam_norm = normalize_cams(z["cam"].astype(np.float32))
        size = (int(z["size"][0]), int(z["size"][1]))
    with np.load(run_path / "irn" / f"{name}.npz") as z:
        boundary = z["boundary"].astype(np.float32)
    return cam_norm, size, boundary


def irn_run(protocol: str, profile: str):
    """The finished CAM + IRN run folder of bench/irn_glas.py (bench/work/cam_<protocol>.<profile>) as the train-only
    IRN analyses read it: ``path``, ``cfg``, the CAM labels' ``mode`` / background id ``bg`` / class ``ids``, the
    background ``values`` of the CAM labels (eval_cam's chosen one) and of the walk (make_sem_seg_labels': its
    threshold, or the offset), the train ``samples``, their class ``present`` flags and the class ``names``."""
    import json
    from types import SimpleNamespace

    from histowsss.config import load_config
    from histowsss.steps.common import samples_for
    from histowsss.steps.irn_common import background_id, cam_class_ids, cam_mode, presence

    path = ROOT / "bench" / "work" / f"cam_{protocol}.{profile}"
    if not (path / "irn").is_dir():
        raise SystemExit(f"{path}: run bench/irn_glas.py --protocol {protocol} --keep first")
    cfg = load_config(str(path / "config.yaml"))
    ss = cfg.sem_seg
    mode = cam_mode(cfg)
    chosen = float(json.loads((path / "metrics" / "cam.json").read_text())["chosen_value"])
    values = {"cam": chosen, "pseudo": ss.bg_threshold if mode == "threshold"
              else chosen if ss.bg_offset == "eval_cam" else float(ss.bg_offset)}
    samples = samples_for(cfg, cfg.data.train_splits)
    return SimpleNamespace(path=path, cfg=cfg, mode=mode, bg=background_id(cfg), ids=cam_class_ids(cfg),
                           values=values, samples=samples, present=presence(cfg, samples),
                           names=cfg.data.classes.names)


def best_time(fn, repeat: int) -> float:
    """Seconds of the fastest of ``repeat`` calls of ``fn`` after one warm-up call (allocator, kernels)."""
    import time

    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


GLAS = ROOT.parent / "shared" / "data" / "glas"

# segmentation networks the cost benches compare: name -> train_seg settings (random weights unless named)
SEGNETS = {
    "unet_lite0": {"architecture": "unet", "encoder": "tf_efficientnet_lite0", "encoder_weights": "none"},
    "dpt_vit_base": {"architecture": "dpt", "encoder": "vit_base_patch16_224", "encoder_weights": "none"},
    "dpt_vit_large": {"architecture": "dpt", "encoder": "vit_large_patch16_224", "encoder_weights": "none",
                      "encoder_model_kwargs": {"init_values": 1e-5}},
}


def glas_train_crops(crop: int, batch: int, seed: int = 0):
    """``batch`` random ``crop``-px RGB crops (uint8, N x H x W x 3) from GlaS train_1..4.png, the first image, and
    the random generator after the draws (for the targets)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [np.asarray(Image.open(GLAS / "images" / f"train_{i}.png").convert("RGB")) for i in (1, 2, 3, 4)]
    crops = []
    for k in range(batch):
        im = images[k % len(images)]
        y, x = int(rng.integers(im.shape[0] - crop + 1)), int(rng.integers(im.shape[1] - crop + 1))
        crops.append(im[y : y + crop, x : x + crop])
    return np.stack(crops), images[0], rng


def device_and_profile(profile: str):
    """The torch device of a bench profile ('gpu' -> cuda when there is one) and its glas-gland config."""
    import torch

    from histowsss.config import load_config

    device = torch.device("cuda" if profile == "gpu" and torch.cuda.is_available() else "cpu")
    return device, load_config("glas-gland-gpu" if profile == "gpu" else "glas-gland")


def seg_training_setup(name: str, profile_name: str, crop: int | None = None, checkpointing: bool = False,
                       **adamw_kwargs):
    """One train_seg step's ingredients for the cost benches, from the same start every call: the SEGNETS network
    ``name`` (seed 0, channels-last, in training mode) on the profile's device, a normalised batch of real GlaS
    crops (``crop`` px, default the profile's), random targets, its AdamW (``adamw_kwargs``: the implementation)
    and whether the profile trains in bfloat16. Returns a namespace (device, ts, net, x, target, opt, amp)."""
    from types import SimpleNamespace

    import torch

    from histowsss.data.transforms import Normalizer
    from histowsss.engine.device import bf16_enabled
    from histowsss.models.segnet import build_segnet

    device, profile = device_and_profile(profile_name)
    ts = profile.train_seg if crop is None else profile.train_seg.model_copy(update={"crop_size": crop})
    c = ts.crop_size
    crops, _, rng = glas_train_crops(c, ts.batch_size)
    torch.manual_seed(0)
    net = build_segnet(ts.model_copy(update=SEGNETS[name]), 2).to(device).to(memory_format=torch.channels_last)
    if checkpointing:
        net.set_grad_checkpointing(True)
    x = Normalizer(net.mean, net.std)(torch.from_numpy(crops).to(device)).contiguous(memory_format=torch.channels_last)
    target = torch.from_numpy(rng.integers(0, 2, (ts.batch_size, c, c))).to(device)
    opt = torch.optim.AdamW(net.param_groups(ts.lr, ts.encoder_lr_mult), weight_decay=ts.weight_decay, **adamw_kwargs)
    amp = bf16_enabled(device, ts.amp, ts.cpu_amp, "train_seg.cpu_amp", warn=False)
    net.train()
    return SimpleNamespace(device=device, ts=ts, net=net, x=x, target=target, opt=opt, amp=amp)


def seg_train_step(net, x, target, opt, device, amp: bool) -> float:
    """One train_seg optimiser step (forward under autocast, cross-entropy, backward, step); returns the loss."""
    import torch

    from histowsss.engine.device import autocast_bf16
    from histowsss.models.segnet import seg_loss

    with autocast_bf16(device, amp):
        logits = net(x)
    loss = seg_loss(logits, target, "ce")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return float(loss.detach())
