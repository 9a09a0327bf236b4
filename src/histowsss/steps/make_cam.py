"""Step make_cam: multi-scale + flip CAMs for every classifier class, for every image of the chosen splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import track

from histowsss.config import RunConfig
from histowsss.data.io import resize
from histowsss.data.loading import load_image
from histowsss.data.transforms import Normalizer
from histowsss.engine.atomic import write_npz
from histowsss.engine.device import resolve_device
from histowsss.engine.run_dir import RunDir
from histowsss.steps.common import all_splits, cam_hash, load_cam_network, output_classes, samples_for

STEP = "make_cam"
STRIDE = 4


@torch.no_grad()
def multiscale_cam(model: torch.nn.Module, img: np.ndarray, scales: list[float], flip: bool, norm: Normalizer,
                   device: torch.device, channels_last: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Sum of ReLU'd CAMs over scales (and horizontal flips) on the stride-4 grid of ``img``; mean logits.

    Returns (cam (K, ceil(H/4), ceil(W/4)) float32, logits (K,)).
    """
    h, w = img.shape[:2]
    grid = (-(-h // STRIDE), -(-w // STRIDE))
    total, logits, n = None, None, 0
    for s in scales:
        a = img if s == 1.0 else resize(img, s, nearest=False)
        x = norm(torch.from_numpy(a if a.flags.writeable else a.copy())[None].to(device))
        if flip:
            x = torch.cat([x, x.flip(-1)])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = model(x)
        cam = F.relu(out["cam"].float())
        if flip:
            cam = cam[0:1] + cam[1:2].flip(-1)
        cam = F.interpolate(cam, size=grid, mode="bilinear", align_corners=False)[0]
        total = cam if total is None else total + cam
        lg = out["logits"].float().mean(0)
        logits = lg if logits is None else logits + lg
        n += 1
    return total.cpu().numpy(), (logits / n).cpu().numpy()  # type: ignore[union-attr]


def cam_path(run: RunDir, name: str) -> Path:
    return run.path / "cams" / f"{name}.npz"


def config_hash(cfg: RunConfig) -> str:
    """Hash of the config sections this step depends on."""
    return cfg.step_hash("data", "backbone", "train_cam", "make_cam")


def run(cfg: RunConfig, run: RunDir, overwrite: bool = False) -> dict:
    """Write cams/<image>.npz (cam at stride 4, float16; image-level probabilities; class names)."""
    mc = cfg.make_cam
    h = config_hash(cfg)
    with run.step(STEP, h, overwrite=overwrite) as info:
        device = resolve_device(cfg.device)
        model = load_cam_network(cfg, run, device)
        if cfg.backbone.channels_last:
            model = model.to(memory_format=torch.channels_last)
        norm = Normalizer(model.backbone.mean, model.backbone.std)
        samples = samples_for(cfg, mc.splits or all_splits(cfg))
        classes = output_classes(cfg)
        done = skipped = 0
        run.sub("cams")
        for s in track(samples, description="make_cam"):
            path = cam_path(run, s.name)
            if path.exists() and not overwrite:
                with np.load(path) as z:
                    if str(z["config_hash"]) == h:
                        skipped += 1
                        continue
            img = load_image(s.image, cfg.data)
            base_hw = img.shape[:2]
            if mc.input_scale != 1.0:
                img = resize(img, mc.input_scale, nearest=False)
            cam, logits = multiscale_cam(model, img, mc.scales, mc.flip, norm, device, cfg.backbone.channels_last)
            grid = (-(-base_hw[0] // STRIDE), -(-base_hw[1] // STRIDE))
            if cam.shape[1:] != grid:
                cam = F.interpolate(torch.from_numpy(cam)[None], size=grid, mode="bilinear", align_corners=False)[0].numpy()
            write_npz(path, cam=cam.astype(np.float16), probs=1 / (1 + np.exp(-logits)), classes=np.array(classes),
                      size=np.array(base_hw), config_hash=np.array(h))
            done += 1
        info.update(outputs=["cams/"], images=len(samples), computed=done, reused=skipped)
        return {"images": len(samples), "computed": done, "reused": skipped}
