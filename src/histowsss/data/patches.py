"""Tiling images into patches, and patch labels (inherited from the image, or from masks by a rule)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histowsss.config import ClassMap, PatchConfig


class PatchError(ValueError):
    """An image cannot be tiled as configured."""


@dataclass(frozen=True)
class Patch:
    """A patch of an image: top-left corner (y, x) and size, in (scaled) image pixels."""

    y: int
    x: int
    size: int


def tile_positions(length: int, size: int, stride: int, border: str) -> list[int]:
    """Start offsets along one axis.

    ``shift``: the last patch is moved back to end at the border (covers everything, no padding);
    ``drop``: patches that would cross the border are dropped; ``pad``: patches may cross the border
    (the caller pads the image, reflecting it).
    """
    if length < size and border != "pad":
        raise PatchError(f"length {length} < patch size {size}")
    if border == "pad":
        n = max(1, int(np.ceil(max(length - size, 0) / stride)) + 1)
        # every patch starts inside the image (with stride > size the last one could start past it: all mirror)
        return [i * stride for i in range(n) if i * stride < length]
    starts = list(range(0, length - size + 1, stride))
    if border == "shift" and starts[-1] + size < length:
        starts.append(length - size)
    return starts


def tile_image(height: int, width: int, cfg: PatchConfig, name: str = "image") -> list[Patch]:
    """All patches of an image of the given size."""
    try:
        ys = tile_positions(height, cfg.size, cfg.stride, cfg.border)
        xs = tile_positions(width, cfg.size, cfg.stride, cfg.border)
    except PatchError:
        raise PatchError(
            f"{name}: image {width}x{height} is smaller than the patch size {cfg.size}; "
            "set data.patches.border=pad, lower data.patches.size, or drop the image"
        ) from None
    return [Patch(y, x, cfg.size) for y in ys for x in xs]


def crop_padded(img: np.ndarray, p: Patch) -> np.ndarray:
    """Crop a patch, reflect-padding where it crosses the image border (numpy reflects again where the pad is
    longer than the image), as the training crops of those pixels are padded, so a patch's label counts the
    pixels the network sees."""
    h, w = img.shape[:2]
    pad_y, pad_x = max(0, p.y + p.size - h), max(0, p.x + p.size - w)
    if pad_y or pad_x:
        pad = [(0, pad_y), (0, pad_x)] + [(0, 0)] * (img.ndim - 2)
        img = np.pad(img, pad, mode="reflect")
    return img[p.y : p.y + p.size, p.x : p.x + p.size]


def pad_to_patches(img: np.ndarray, cfg: PatchConfig | None) -> np.ndarray:
    """``img`` reflect-padded at the bottom/right as far as its ``border: pad`` patches reach, so that any window of
    it is the patch :func:`crop_padded` cuts (cached features of a patch past the border then see the pixels its
    label counts); unchanged for other borders."""
    if cfg is None or cfg.border != "pad":
        return img
    h, w = img.shape[:2]
    patches = tile_image(h, w, cfg)
    pad_y = max(0, max(p.y + p.size for p in patches) - h)
    pad_x = max(0, max(p.x + p.size for p in patches) - w)
    if not (pad_y or pad_x):
        return img
    return np.pad(img, [(0, pad_y), (0, pad_x)] + [(0, 0)] * (img.ndim - 2), mode="reflect")


def patch_labels_from_mask(class_mask: np.ndarray, classes: ClassMap, min_fraction: float,
                           ignore_index: int = 255) -> np.ndarray:
    """Multi-hot patch label: class c is present if more than ``min_fraction`` of the patch's labelled pixels are c.

    This is the OEEM rule on GlaS (112 px crops, 5 %): a crop is "gland" if > 5 % of its pixels are gland
    and "background" if > 5 % are background; a crop can carry both.
    """
    valid = class_mask != ignore_index
    n = int(valid.sum())
    t = np.zeros(len(classes.names), dtype=np.float32)
    if n == 0:
        return t
    counts = np.bincount(class_mask[valid].ravel(), minlength=len(classes.names))[: len(classes.names)]
    t[counts / n > min_fraction] = 1.0
    return t
