"""Stain normalisation (Reinhard et al. 2001): match each image's LAB mean/std to a reference.

Whole-slide staining differs between patients and labs; an image-level classifier happily learns that
colour instead of morphology (on GlaS, benign and malignant images differ in stain as well). Normalising
every image to the same LAB statistics removes that shortcut. The reference statistics are typical H&E
values (measured on GlaS train images); pass your own with ``data.stain_reference``.
"""

from __future__ import annotations

import numpy as np

MIN_STD = 1.0  # LAB units

# LAB mean and std of a typical H&E image (mean over the 85 GlaS train images).
DEFAULT_REFERENCE = ((61.4, 40.8, -26.8), (14.3, 10.9, 9.9))


def lab_stats(img: np.ndarray, tissue_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel LAB mean and std of an RGB uint8 image (ignoring near-white background if asked)."""
    from skimage.color import rgb2lab

    lab = rgb2lab(img).reshape(-1, 3)
    if tissue_only:
        keep = lab[:, 0] < 92
        if keep.sum() > 100:
            lab = lab[keep]
    # a floor of one LAB unit: a nearly uniform image (a blank or pale tile) would otherwise have its smallest
    # differences stretched a million-fold into garish colours
    return lab.mean(axis=0), np.maximum(lab.std(axis=0), MIN_STD)


def reinhard(img: np.ndarray, reference: tuple = DEFAULT_REFERENCE,
             source: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Reinhard normalisation of an RGB uint8 image to the reference LAB mean/std.

    ``source``: the LAB mean/std to map from (default: the image's own). Whole-slide tiles pass the slide's
    statistics, so every tile of a slide gets the same colour mapping whatever its content.
    """
    from skimage.color import lab2rgb, rgb2lab

    mean, std = lab_stats(img) if source is None else (np.asarray(source[0]), np.asarray(source[1]))
    lab = rgb2lab(img)
    t_mean, t_std = np.asarray(reference[0]), np.asarray(reference[1])
    lab = (lab - mean) / std * t_std + t_mean
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    return np.clip(np.round(lab2rgb(lab) * 255), 0, 255).astype(np.uint8)
