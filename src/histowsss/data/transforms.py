"""H&E augmentation and normalisation: dihedral flips/rotations, HED stain jitter, scale."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from histowsss.config import AugmentConfig

if TYPE_CHECKING:  # torch is imported where it is used, so that the data layer loads without it
    import torch

# Ruifrok & Johnston stain vectors (as in scikit-image's rgb_from_hed).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
_RGB_FROM_HED[2] = np.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def hed_jitter(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Perturb haematoxylin/eosin/DAB concentrations: hed * (1 + a) + b, a, b ~ N(0, sigma).

    Returns uint8 of the input's shape (rounded, so a tiny sigma changes nothing); ``sigma <= 0`` is the identity.
    """
    if sigma <= 0:
        return img
    od = -np.log(np.maximum(img.astype(np.float32), 1.0) / 255.0)
    hed = od.reshape(-1, 3) @ _HED_FROM_RGB.astype(np.float32)
    a = rng.normal(0, sigma, 3).astype(np.float32)
    b = rng.normal(0, sigma, 3).astype(np.float32)
    hed = hed * (1 + a) + b
    out = np.exp(-(hed @ _RGB_FROM_HED.astype(np.float32))) * 255.0
    return np.clip(np.rint(out), 0, 255).reshape(img.shape).astype(np.uint8)


def mirror_pad(arr: np.ndarray, min_side: int) -> np.ndarray:
    """``arr`` (H, W[, C]) mirrored out at the bottom/right until each side is at least ``min_side`` (unchanged
    when it already is)."""
    ph, pw = max(0, min_side - arr.shape[0]), max(0, min_side - arr.shape[1])
    if ph == 0 and pw == 0:
        return arr
    return np.pad(arr, ((0, ph), (0, pw)) + ((0, 0),) * (arr.ndim - 2), mode="symmetric")


def dihedral(arr: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 dihedral transforms (k in 0..7): k % 4 quarter turns, then a flip if k >= 4."""
    if not 0 <= k <= 7:
        raise ValueError(f"dihedral index k={k} must be in 0..7")
    out = np.rot90(arr, k % 4, axes=(0, 1))
    if k >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def random_dihedral_index(rng: np.random.Generator, cfg: AugmentConfig) -> int:
    """Draw a dihedral transform index allowed by the config."""
    rot = int(rng.integers(4)) if cfg.rot90 else 0
    flip = 4 if (cfg.flips and rng.random() < 0.5) else 0
    return rot + flip


def augment_image(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Stain jitter + a random dihedral transform (scale is applied by the caller, which knows the crop)."""
    img = hed_jitter(img, rng, cfg.hed_jitter)
    return dihedral(img, random_dihedral_index(rng, cfg))


class Normalizer:
    """Image -> float tensor normalised with the backbone's pretraining mean/std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        import torch

        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, batch_uint8: "torch.Tensor") -> "torch.Tensor":
        """(B, H, W, 3) uint8 or (B, 3, H, W) -> normalised (B, 3, H, W) float32 on the same device."""
        x = batch_uint8
        if x.dim() == 4 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        x = x.float() / 255.0
        return (x - self.mean.to(x.device)) / self.std.to(x.device)
