"""Training crops for the CAM classifier: fixed patches (with patch labels) or random crops per epoch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histowsss.config import DataConfig, TrainCamConfig
from histowsss.data.io import image_size
from histowsss.data.manifest import Sample
from histowsss.data.masks import IGNORE, load_class_mask
from histowsss.data.patches import crop_padded, patch_labels_from_mask, tile_image


@dataclass(frozen=True)
class CropExample:
    """A square crop of image ``image`` at (y, x) of side ``size`` (scaled-image pixels) with its target."""

    image: int
    y: int
    x: int
    size: int
    target: np.ndarray


def mask_image_label(mask: np.ndarray, data: DataConfig) -> np.ndarray:
    """Multi-hot image label read off a class mask: the classes its patches carry by the patch rule (a class that
    covers more than ``min_fraction`` of some patch, so a small focus is not lost to a large image), or of the whole
    image when it holds no patch; without ``data.patches``, every class present."""
    if data.patches is None:
        return patch_labels_from_mask(mask, data.classes, 0.0)
    from histowsss.data.patches import PatchError

    whole = patch_labels_from_mask(mask, data.classes, data.patches.min_fraction)
    try:
        patches = tile_image(*mask.shape[:2], data.patches)
    except PatchError:  # smaller than a patch (shift / drop): the image is the one patch
        return whole
    out = np.zeros_like(whole)
    for p in patches:
        np.maximum(out, patch_labels_from_mask(crop_padded(mask, p), data.classes, data.patches.min_fraction), out=out)
    return out if out.any() else whole


def image_targets(samples: list[Sample], data: DataConfig) -> np.ndarray:
    """(N, n_classes) multi-hot image labels; without a label column, derived from masks by the patch rule
    (:func:`mask_image_label`)."""
    if data.has_labels:
        return np.stack([s.target(data.classes) for s in samples])
    return np.stack([mask_image_label(load_class_mask(s, data), data) for s in samples])


def patch_examples(samples: list[Sample], data: DataConfig, sizes: list[tuple[int, int]]) -> list[CropExample]:
    """Every patch of every image (``sizes`` = scaled (h, w) per image) with its label by the configured rule;
    by mask fraction, patches with no labelled pixel (all ignore) are left out."""
    assert data.patches is not None
    out = []
    targets = image_targets(samples, data) if data.patches.label_rule == "image" else None
    for i, s in enumerate(samples):
        h, w = sizes[i]
        patches = tile_image(h, w, data.patches, name=str(s.image))
        mask = load_class_mask(s, data) if data.patches.label_rule == "mask_fraction" else None
        if mask is not None and mask.shape[:2] != (h, w):
            raise ValueError(
                f"{s.mask}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image {s.image} "
                f"({w}x{h} after image_scale {data.image_scale}); the mask belongs to another image or was resized: "
                "fix the manifest row or re-export the mask (`histowsss data check` lists every such file)"
            )
        for p in patches:
            if mask is not None:
                window = crop_padded(mask, p)
                if not (window != IGNORE).any():
                    continue  # no labelled pixel: no label (an all-ignore patch is not "no class present")
                t = patch_labels_from_mask(window, data.classes, data.patches.min_fraction)
            else:
                t = targets[i]  # type: ignore[index]
            out.append(CropExample(i, p.y, p.x, p.size, t))
    return out


def random_crop_examples(targets: np.ndarray, sizes: list[tuple[int, int]], crop: int, per_image: int,
                         rng: np.random.Generator) -> list[CropExample]:
    """``per_image`` random square crops per image (an image smaller than ``crop`` gives crops of its short side;
    train_cam mirrors such images out to the crop first)."""
    out = []
    for i, (h, w) in enumerate(sizes):
        for _ in range(per_image):
            c = min(crop, h, w)
            y = int(rng.integers(0, h - c + 1))
            x = int(rng.integers(0, w - c + 1))
            out.append(CropExample(i, y, x, c, targets[i]))
    return out


def scaled_sizes(samples: list[Sample], data: DataConfig, min_size: int | None = None) -> list[tuple[int, int]]:
    """Image sizes after ``data.image_scale``; clear error for images smaller than ``min_size``."""
    return fitted_sizes(samples, data, min_size, mirror=False)[0]


def fitted_sizes(samples: list[Sample], data: DataConfig, min_size: int | None,
                 mirror: bool) -> tuple[list[tuple[int, int]], list[str]]:
    """Image sizes after ``data.image_scale``, and the names of the images mirrored out to ``min_size``.

    An image smaller than ``min_size`` is a clear error naming it, or, with ``mirror`` and random crops (no
    ``data.patches``), is mirrored out to it (:func:`histowsss.data.transforms.mirror_pad`; its size is given as
    the mirrored one). Padded patches take any size; unpadded patches refuse small images (their labels may come
    from masks, which are not mirrored).
    """
    sizes, mirrored = [], []
    for s in samples:
        h, w = image_size(s.image)
        hs, ws = round(h * data.image_scale), round(w * data.image_scale)
        if min_size is not None and min(hs, ws) < min_size and not (data.patches and data.patches.border == "pad"):
            if not mirror or data.patches is not None:
                fix = ("set data.patches.border=pad, lower data.patches.size" if data.patches is not None else
                       "lower train_cam.crop_size, set train_cam.small_images=mirror")
                raise ValueError(
                    f"{s.image}: image {ws}x{hs} (after image_scale {data.image_scale}) is smaller than the training "
                    f"crop {min_size}; {fix}, or remove the image")
            hs, ws = max(hs, min_size), max(ws, min_size)
            mirrored.append(s.name)
        sizes.append((hs, ws))
    return sizes, mirrored


def dihedral_box(y: int, x: int, size: int, h: int, w: int, k: int) -> tuple[int, int]:
    """Top-left corner of a square box after ``transforms.dihedral(k)`` of an (h, w) image."""
    if not 0 <= k <= 7:
        raise ValueError(f"dihedral index k={k} must be in 0..7")
    for _ in range(k % 4):  # np.rot90 (counter-clockwise): (y, x) -> (w - 1 - x, y); shape (h, w) -> (w, h)
        y, x = w - x - size, y
        h, w = w, h
    if k >= 4:  # horizontal flip
        x = w - x - size
    return y, x


def training_crop_size(data: DataConfig, train: TrainCamConfig) -> int:
    """Side of a training crop in scaled-image pixels."""
    return data.patches.size if data.patches else train.crop_size
