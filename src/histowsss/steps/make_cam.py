"""Step make_cam: multi-scale + flip CAMs for every classifier class, for every image of the chosen splits."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.progress import track

from histowsss.config import RunConfig
from histowsss.data.io import resize
from histowsss.data.loading import load_image
from histowsss.data.transforms import Normalizer
from histowsss.engine.atomic import CorruptFileError, read_npz, write_npz
from histowsss.engine.run_dir import RunDir
from histowsss.steps.common import all_splits, load_cam_network, output_classes, samples_for

if TYPE_CHECKING:
    import torch

STEP = "make_cam"
STRIDE = 4


def _no_grad(fn):
    """``torch.no_grad()`` around ``fn``, torch imported at the call (planning a run, or a report, reads this module
    without loading torch)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)
    return wrapper


def cam_on_pixels(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A network's strided CAM (N, K, hc, wc) on the pixels of its input (N, K, *size): upsampled to the padded
    extent its cells cover (``stride * hc``), then cut to the input (stretching it onto the input instead would
    shift it by up to a stride at the far edges)."""
    import torch.nn.functional as F

    hc, wc = cam.shape[-2:]
    h, w = size
    # the power of two whose grid this is, rounded up ('same' padding, timm's tf_ models) or down (ConvNeXt); where
    # several fit (grids of a cell or two), the one nearest the plain ratio
    fits = [s for s in (1, 2, 4, 8, 16, 32, 64)
            if (-(-h // s), -(-w // s)) == (hc, wc) or (h // s, w // s) == (hc, wc)]
    if not fits:  # not a strided grid of this input: the best is to stretch it
        return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    ratio = max(h / hc, w / wc)
    stride = min(fits, key=lambda s: (abs(s - ratio), s))
    up = F.interpolate(cam, size=(hc * stride, wc * stride), mode="bilinear", align_corners=False)
    if up.shape[-2] < h or up.shape[-1] < w:  # a grid rounded down leaves the far edge uncovered: extend its cells
        up = F.pad(up, (0, max(0, w - up.shape[-1]), 0, max(0, h - up.shape[-2])), mode="replicate")
    return up[..., :h, :w]


def pixels_to_grid(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A per-pixel map (N, K, h', w') of an image of ``size`` (h', w' at any scale) on the stride-4 grid of that
    image: resized to ``size``, padded at the far edges to whole cells, averaged per 4 x 4 cell (the inverse of
    ``evaluation.cam_labels.upsample_cam``)."""
    import torch.nn.functional as F

    h, w = size
    if cam.shape[-2:] != (h, w):
        cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
    gh, gw = -(-h // STRIDE), -(-w // STRIDE)
    cam = F.pad(cam, (0, gw * STRIDE - w, 0, gh * STRIDE - h), mode="replicate")
    return F.avg_pool2d(cam, STRIDE)


@_no_grad
def multiscale_cam(model: torch.nn.Module, img: np.ndarray, scales: list[float], flip: bool, norm: Normalizer,
                   device: torch.device, channels_last: bool = True,
                   size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sum of ReLU'd CAMs over scales (and horizontal flips) on the stride-4 grid of an image of ``size`` (default
    ``img``'s own; another when ``img`` is a rescaled copy of it); mean logits.

    Returns (cam (K, ceil(H/4), ceil(W/4)) float32, logits (K,)).
    """
    import torch
    import torch.nn.functional as F

    h, w = size or img.shape[:2]
    total, logits, n = None, None, 0
    for s in scales:
        a = img if s == 1.0 else resize(img, s, nearest=False)
        x = norm(torch.from_numpy(a if a.flags.writeable else a.copy())[None].to(device))
        if flip:
            x = torch.cat([x, x.flip(-1)])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = model(x)
        # each view's CAM on its own pixels first: a flipped image's stride-16 cells start at its other edge
        cam = cam_on_pixels(F.relu(out["cam"].float()), a.shape[:2])
        if flip:
            cam = cam[0:1] + cam[1:2].flip(-1)
        cam = pixels_to_grid(cam, (h, w))[0]
        total = cam if total is None else total + cam
        lg = out["logits"].float().mean(0)
        logits = lg if logits is None else logits + lg
        n += 1
    return total.cpu().numpy(), (logits / n).cpu().numpy()  # type: ignore[union-attr]


@_no_grad
def patchwise_cam(model: torch.nn.Module, img: np.ndarray, scales: list[float], flip: bool, norm: Normalizer,
                  device: torch.device, patch: int, channels_last: bool = True,
                  batch: int = 64, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CAMs computed patch by patch (each patch alone, overlapping by half, averaged), summed over scales.

    For networks trained on isolated patches: the CAM of a pixel then comes from the patches that contain it,
    with no context from outside them. ``size`` as in ``multiscale_cam``. Returns (cam (K, ceil(H/4),
    ceil(W/4)), mean patch logits (K,)).
    """
    import torch
    import torch.nn.functional as F

    from histowsss.data.patches import Patch, crop_padded, tile_positions

    size = size or img.shape[:2]
    total, logit_sum, n_logits = None, None, 0
    for s in scales:
        a = img if s == 1.0 else resize(img, s, nearest=False)
        hs, ws = a.shape[:2]
        ys = tile_positions(hs, patch, max(1, patch // 2), "pad" if hs < patch else "shift")
        xs = tile_positions(ws, patch, max(1, patch // 2), "pad" if ws < patch else "shift")
        boxes = [Patch(y, x, patch) for y in ys for x in xs]
        acc = torch.zeros(0)
        cnt = torch.zeros(1, max(hs, ys[-1] + patch), max(ws, xs[-1] + patch))
        for b in range(0, len(boxes), batch):
            bx = boxes[b : b + batch]
            x = norm(torch.from_numpy(np.stack([crop_padded(a, p) for p in bx])).to(device))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model(x)
            # each view's CAM on the patch's pixels before the flipped one is flipped back (see multiscale_cam)
            cam = cam_on_pixels(F.relu(out["cam"].float()), (patch, patch))
            lg = out["logits"].float()
            if flip:
                o2 = model(x.flip(-1))
                cam = 0.5 * (cam + cam_on_pixels(F.relu(o2["cam"].float()), (patch, patch)).flip(-1))
                lg = 0.5 * (lg + o2["logits"].float())
            cam = cam.cpu()
            if acc.numel() == 0:
                acc = torch.zeros(cam.shape[1], cnt.shape[1], cnt.shape[2])
            for p, c in zip(bx, cam):
                acc[:, p.y : p.y + patch, p.x : p.x + patch] += c
                cnt[:, p.y : p.y + patch, p.x : p.x + patch] += 1
            logit_sum = lg.sum(0) if logit_sum is None else logit_sum + lg.sum(0)
            n_logits += len(bx)
        m = pixels_to_grid((acc / cnt.clamp(min=1))[None, :, :hs, :ws], size)[0]
        total = m if total is None else total + m
    return total.numpy(), (logit_sum / max(n_logits, 1)).cpu().numpy()  # type: ignore[union-attr]


def image_cam(model: torch.nn.Module, img: np.ndarray, cfg: RunConfig, norm: Normalizer,
              device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """make_cam's CAMs and mean logits of one image (as load_image returns it): ``make_cam.input_scale``, then
    patch by patch (``make_cam.patch_size``) or whole, at ``make_cam.scales`` with ``flip``; bfloat16 autocast on the
    CPU with ``make_cam.cpu_amp`` (CAMs and logits come back in float32 either way)."""
    from histowsss.engine.device import autocast_bf16, bf16_enabled

    mc, cl = cfg.make_cam, cfg.backbone.channels_last
    size = img.shape[:2]  # the CAM goes on this image's stride-4 grid, whatever scale the network saw
    if mc.input_scale != 1.0:
        img = resize(img, mc.input_scale, nearest=False)
    amp = bf16_enabled(device, False, mc.cpu_amp, "make_cam.cpu_amp")
    with autocast_bf16(device, amp):
        if mc.patch_size:
            return patchwise_cam(model, img, mc.scales, mc.flip, norm, device, mc.patch_size, cl, size=size)
        return multiscale_cam(model, img, mc.scales, mc.flip, norm, device, cl, size=size)


def cam_path(run: RunDir, name: str) -> Path:
    return run.path / "cams" / f"{name}.npz"


def config_hash(cfg: RunConfig) -> str:
    """Hash of the config sections this step depends on."""
    return cfg.step_hash("data", "backbone", "train_cam", "make_cam")


def requires(cfg: RunConfig) -> list[tuple[str, str]]:
    """The finished steps (status record, config hash) this step reads: checked before a run starts."""
    from histowsss.steps.common import cam_hash

    return [("train_cam", cam_hash(cfg))]


def vit_scales_note(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> str | None:
    """What make_cam's scales above 1 cost with a vision transformer on the CPU (attention grows with the square of
    the tokens: scale 2 costs ~16x scale 1; docs/cam.md); None otherwise."""
    scales = cfg.make_cam.scales
    if model.backbone.vit is None or device.type != "cpu" or max(scales) <= 1:
        return None
    return (f"a vision transformer on the CPU at scales {scales}: the scales above 1 cost hours on a large model "
            "(ViT-L: 124 s per GlaS image at 1, 1.5, 2; bench/results/vit_backbone_cost.cpu.json); --set "
            "make_cam.scales=[1.0], or a GPU")


# the pipeline passes ``reuse``: made again for other reasons than --overwrite, CAM files that still hold keep
REUSES_OUTPUTS = True


def training_samples(cfg: RunConfig, samples: list) -> list:
    """The images whose CAMs the training steps may read: those of every split but the test ones (which no
    training step may read), so that the digest does not change with ir_label.splits or train_seg.splits."""
    test = set(cfg.data.test_splits)
    return [s for s in samples if s.split not in test]


def handoff_now(cfg: RunConfig, run: RunDir, training: bool = True) -> str | None:
    """The ``train_handoff`` (``training=False``: ``handoff``) make_cam would record now (the manifest's images as
    they are, the checkpoint in the folder): a dry run and the stale marks compare it with the record's. None when
    it cannot be told."""
    from histowsss.config.run import _file_fingerprint, image_fingerprint

    if _file_fingerprint(run.path / "checkpoints" / "cam.safetensors") is None:
        return None
    try:
        samples = samples_for(cfg, cfg.make_cam.splits or all_splits(cfg))
    except Exception:  # an unreadable manifest: the checks before a run say why
        return None
    if training:
        samples = training_samples(cfg, samples)
    prints = {s.name: image_fingerprint(str(s.image)) for s in samples}
    return handoff(samples, config_hash(cfg), network_id(run, cfg), prints)


def network_id(run: RunDir, cfg: RunConfig) -> str:
    """Which classifier CAMs come from: train_cam's settings and the digest of its checkpoint's bytes (trained
    again, it is another network, unless it came out bit for bit the same)."""
    from histowsss.config.run import _file_fingerprint
    from histowsss.steps.common import cam_hash

    return f"{cam_hash(cfg)}:{_file_fingerprint(run.path / 'checkpoints' / 'cam.safetensors')}"


def handoff(samples: list, h: str, network: str, prints: dict[str, str]) -> str:
    """Digest of what readers of these images' CAMs read: which images, their files' contents, the settings and the
    network (CAM files' own bytes differ from run to run: compressed floats)."""
    import hashlib

    lines = sorted(f"{s.name}\t{prints[s.name]}" for s in samples)
    return hashlib.sha256("\n".join([h, network, *lines]).encode()).hexdigest()[:16]


def _holds(path: Path, h: str, image: str, network: str, strict: bool) -> bool:
    """Whether the CAM file at ``path`` is one these settings would make: same settings, and (``strict``; or when
    the file says) the same image file contents and network. A damaged file does not (made again)."""
    try:
        z = read_npz(path)
    except CorruptFileError:  # a file damaged by a machine crash is made again
        return False
    if "config_hash" not in z or str(z["config_hash"]) != h:  # (files of an early version hold no hash)
        return False
    if "image" not in z or "network" not in z:  # (written before files said: kept on a resume only)
        return not strict
    return str(z["image"]) == image and str(z["network"]) == network


def run(cfg: RunConfig, run: RunDir, overwrite: bool = False, reuse: bool = False) -> dict:
    """Write cams/<image>.npz (cam at stride 4, float16; image-level probabilities; class names; the image file's
    fingerprint and the network it came from). A step taken up again keeps the files it made; ``reuse`` (made again
    for other reasons than --overwrite: images added, one replaced, train_cam made again) keeps the files of the
    same settings, image contents and network, so that test images added cost their CAMs only."""
    import torch

    from histowsss.config.run import image_fingerprint
    from histowsss.engine.device import resolve_device

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
        note = vit_scales_note(model, cfg, device)
        if note:
            print(f"make_cam: {note}", flush=True)
        done = skipped = 0
        run.sub("cams")
        network = network_id(run, cfg)  # (the file load_cam_network read)
        prints = {s.name: image_fingerprint(str(s.image)) for s in samples}
        for s in track(samples, description="make_cam"):
            path = cam_path(run, s.name)
            if path.exists() and (reuse or not overwrite) and _holds(path, h, prints[s.name], network, overwrite):
                skipped += 1
                continue
            img = load_image(s.image, cfg.data)
            base_hw = img.shape[:2]
            cam, logits = image_cam(model, img, cfg, norm, device)
            write_npz(path, cam=cam.astype(np.float16), probs=1 / (1 + np.exp(-logits)), classes=np.array(classes),
                      size=np.array(base_hw), config_hash=np.array(h), image=np.array(prints[s.name]),
                      network=np.array(network))
            done += 1
        info.update(outputs=["cams/"], images=len(samples), computed=done, reused=skipped,
                    handoff=handoff(samples, h, network, prints),
                    train_handoff=handoff(training_samples(cfg, samples), h, network, prints))
        return {"images": len(samples), "computed": done, "reused": skipped}
