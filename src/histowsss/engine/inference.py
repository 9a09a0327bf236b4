"""Sliding-window inference of a dense network on images of any size: overlapping tiles, blended, with TTA.

Probabilities (softmax) of overlapping tiles are averaged with a weight map per tile: ``gaussian`` (nnU-Net's
centre-weighted window, sigma = tile / 8, so tile borders, where context is missing, count little), ``linear``
(a pyramid falling to 1/(d+1) at the edge) or ``mean``. Test-time augmentation: ``flip`` = identity + horizontal
flip, ``dihedral`` = the 8 flips/rotations; each is undone before averaging. Images smaller than a tile are
padded by reflection and cropped back. :func:`multiscale_probs` repeats all of it on resized copies of the image
and averages the probabilities, resized back to the image's grid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from histowsss.engine.device import autocast_bf16, bf16_enabled


def window(tile: int, blend: str) -> np.ndarray:
    """(tile, tile) float32 weight map of one tile, max 1, strictly positive."""
    if blend == "mean":
        return np.ones((tile, tile), np.float32)
    c = (tile - 1) / 2.0
    r = np.arange(tile, dtype=np.float64)
    if blend == "gaussian":
        sigma = tile / 8.0
        g = np.exp(-((r - c) ** 2) / (2 * sigma**2))
        w = np.outer(g, g)
    elif blend == "linear":
        d = np.minimum(r, tile - 1 - r) + 1.0
        w = np.minimum.outer(d, d)
    else:
        raise ValueError(f"unknown blend {blend!r}; choose gaussian, linear or mean")
    w = w / w.max()
    return np.maximum(w, 1e-3).astype(np.float32)


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets covering ``[0, length)`` with tiles of ``tile`` overlapping by about ``overlap``."""
    if length <= tile:
        return [0]
    step = max(1, int(round(tile * (1.0 - overlap))))
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _tta_ops(tta: str) -> list[int]:
    if tta == "none":
        return [0]
    if tta == "flip":
        return [0, 4]
    if tta == "dihedral":
        return list(range(8))
    raise ValueError(f"unknown tta {tta!r}; choose none, flip or dihedral")


def _apply(x: torch.Tensor, k: int) -> torch.Tensor:
    """Dihedral transform k of (B, C, H, W): k % 4 quarter turns then a horizontal flip if k >= 4."""
    if k % 4:  # rot90 by 0 would copy into the default layout
        x = torch.rot90(x, k % 4, dims=(2, 3))
    return x.flip(3) if k >= 4 else x


def _undo(x: torch.Tensor, k: int) -> torch.Tensor:
    if k >= 4:
        x = x.flip(3)
    return torch.rot90(x, -(k % 4), dims=(2, 3))


@torch.no_grad()
def sliding_window_probs(model: torch.nn.Module, image: np.ndarray, normalizer, tile: int = 256,
                         overlap: float = 0.25, blend: str = "gaussian", tta: str = "flip", batch_size: int = 8,
                         device: torch.device | str = "cpu", size_divisor: int = 32,
                         amp: bool = False, cpu_amp: bool = False, channels_last: bool = True) -> np.ndarray:
    """Class probabilities (C, H, W) float32 of an RGB uint8 image (H, W, 3).

    ``amp`` / ``cpu_amp``: bfloat16 autocast on CUDA / on the CPU (probabilities are computed in float32 either way);
    ``channels_last``: tiles go through the network in channels-last layout (faster convolutions, same result up to
    float rounding); False: channels-first."""
    device = torch.device(device)
    if tile % size_divisor:
        raise ValueError(f"tile size {tile} must be a multiple of {size_divisor}")
    h, w = image.shape[:2]
    ph, pw = max(0, tile - h), max(0, tile - w)
    img = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect") if (ph or pw) else image
    H, W = img.shape[:2]
    wmap = torch.from_numpy(window(tile, blend)).to(device)
    boxes = [(y, x) for y in tile_starts(H, tile, overlap) for x in tile_starts(W, tile, overlap)]
    ops = _tta_ops(tta)
    acc: torch.Tensor | None = None
    wsum = torch.zeros((H, W), dtype=torch.float32, device=device)
    x_all = torch.from_numpy(np.require(img, requirements=["C", "W"]))  # copies read-only arrays
    was_training = model.training
    model.eval()
    use_amp = bf16_enabled(device, amp, cpu_amp, "eval_seg.cpu_amp")
    # set after the flips / turns, which may change the layout (normalised HWC tiles start channels-last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    try:
        for i in range(0, len(boxes), batch_size):
            chunk = boxes[i : i + batch_size]
            x = torch.stack([x_all[y : y + tile, xx : xx + tile] for y, xx in chunk]).to(device)
            x = normalizer(x)
            prob = None
            for k in ops:
                xk = _apply(x, k).contiguous(memory_format=fmt)
                with autocast_bf16(device, use_amp):
                    logits = model(xk)
                p = _undo(F.softmax(logits.float(), dim=1), k)
                prob = p if prob is None else prob + p
            prob = prob / len(ops)  # type: ignore[operator]
            if acc is None:
                acc = torch.zeros((prob.shape[1], H, W), dtype=torch.float32, device=device)
            for j, (y, xx) in enumerate(chunk):
                acc[:, y : y + tile, xx : xx + tile] += prob[j] * wmap
                wsum[y : y + tile, xx : xx + tile] += wmap
    finally:
        model.train(was_training)
    out = (acc / wsum.clamp_min(1e-8))[:, :h, :w]  # type: ignore[operator]
    return out.cpu().numpy()


def multiscale_probs(model: torch.nn.Module, image: np.ndarray, normalizer, scales: list[float] | tuple[float, ...],
                     **kwargs) -> np.ndarray:
    """Mean of :func:`sliding_window_probs` over resized copies of ``image`` (bilinear, antialiased), each
    resized back (bilinear) to (H, W): multi-scale test-time augmentation. ``scales == [1.0]`` is the plain call."""
    from histowsss.data.io import resize

    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive factors, got {list(scales)}")
    h, w = image.shape[:2]
    acc: np.ndarray | None = None
    for s in scales:
        if s == 1.0:
            p = sliding_window_probs(model, image, normalizer, **kwargs)
        else:
            p = sliding_window_probs(model, resize(image, s, nearest=False), normalizer, **kwargs)
            p = F.interpolate(torch.from_numpy(p)[None], size=(h, w), mode="bilinear", align_corners=False)[0].numpy()
        acc = p if acc is None else acc + p
    return acc / len(scales)  # type: ignore[operator]
