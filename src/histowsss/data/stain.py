"""Stain normalisation: Reinhard et al. 2001 (LAB mean/std) and Macenko et al. 2009 (H&E stain vectors).

Whole-slide staining differs between patients and labs; an image-level classifier happily learns that
colour instead of morphology (on GlaS, benign and malignant images differ in stain as well). Normalising
every image to the same statistics removes that shortcut.

* ``reinhard``: each image's LAB mean/std is matched to a reference (default: typical H&E values measured on GlaS
  train images).
* ``macenko``: each image's two stain vectors (optical-density directions of haematoxylin and eosin) and their
  99th-percentile concentrations are estimated from its tissue pixels (the plane of the two main axes of their
  optical densities, the robust extreme angles in it); every pixel is unmixed into the two concentrations, which are
  scaled to the reference's and mixed again with the reference's vectors (M. Macenko et al., ISBI 2009). The
  default reference is the median over the 85 GlaS train images (``histowsss data stain-reference``); the published
  implementations' constants (HEnorm, torchstain) give browner images. torchstain implements the method too, but
  estimates the vectors from each image it normalises, with no way to hand it the vectors of a whole slide (every
  tile of a slide must get the same mapping); hence these few lines.

Pass your own reference with ``data.stain_reference`` (``histowsss data stain-reference`` measures one).
"""

from __future__ import annotations

from typing import Callable, Iterable

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


# Macenko: (OD vector r, g, b, 99th-percentile concentration) of haematoxylin, then of eosin; the median of the 85
# GlaS train images (`histowsss data stain-reference ../shared/data/glas/manifest.csv -c glas-gland -m macenko`)
MACENKO_REFERENCE = ((0.4644, 0.8445, 0.2667, 1.711), (0.2653, 0.9411, 0.2095, 1.268))
LIGHT = 240.0  # transmitted light intensity (the optical density of this grey level is 0)
OD_MIN = 0.15  # pixels with an optical density below this in any channel are glass or too pale to carry a stain
ANGLE_PERCENTILE = 1.0  # robust extremes of the stain angles
MIN_TISSUE_PIXELS = 100
MIN_CONCENTRATION = 1e-3


def optical_density(img: np.ndarray) -> np.ndarray:
    """(N, 3) float32 optical densities of an RGB uint8 image (Beer-Lambert, natural log)."""
    return -np.log((img.reshape(-1, 3).astype(np.float32) + 1.0) / LIGHT)


def macenko_stains(img: np.ndarray) -> np.ndarray | None:
    """The (2, 4) Macenko stain estimate of an RGB uint8 image: rows haematoxylin and eosin, each its unit OD
    vector (r, g, b) and the 99th percentile of its concentration; None when under 100 pixels carry stain (glass,
    a blank tile): such an image is left as it is."""
    od = optical_density(img).astype(np.float64)
    tissue = od[(od >= OD_MIN).all(axis=1)]
    if len(tissue) < MIN_TISSUE_PIXELS:
        return None
    _, vecs = np.linalg.eigh(np.cov(tissue.T))
    plane = vecs[:, 1:3]  # the two largest eigenvalues' axes
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v1, v2 = (v if v.sum() >= 0 else -v for v in (v1, v2))
    he = np.stack([v1, v2] if v1[0] > v2[0] else [v2, v1], axis=1)  # haematoxylin absorbs more red
    conc = np.linalg.pinv(he) @ od.T  # least-squares concentrations
    max_c = np.maximum(np.percentile(conc, 99, axis=1), MIN_CONCENTRATION)
    return np.column_stack([he.T, max_c])


def macenko(img: np.ndarray, reference: tuple = MACENKO_REFERENCE, source: np.ndarray | None = None) -> np.ndarray:
    """Macenko normalisation of an RGB uint8 image to the reference stains.

    ``source``: the (2, 4) stain estimate to unmix with (default: the image's own, :func:`macenko_stains`).
    Whole-slide tiles pass the slide's, so every tile of a slide gets the same mapping whatever its content.
    An image with no stained pixels (and no ``source``) is returned unchanged.
    """
    src = macenko_stains(img) if source is None else np.asarray(source, np.float64)
    if src is None:
        return img.copy()
    ref = np.asarray(reference, np.float64)
    unmix = np.linalg.pinv(src[:, :3].T)  # (2, 3): least-squares concentrations of the source stains
    scale = ref[:, 3] / np.maximum(src[:, 3], MIN_CONCENTRATION)
    mix = (ref[:, :3].T * scale).astype(np.float32)  # (3, 2): scaled concentrations mixed with the reference
    od = optical_density(img) @ (mix @ unmix).T.astype(np.float32)
    out = LIGHT * np.exp(-np.maximum(od, -1.0))  # brighter than 255 either way (no overflow)
    return np.clip(np.round(out), 0, 255).astype(np.uint8).reshape(img.shape)


def stain_source(method: str, img: np.ndarray) -> object:
    """The source statistics ``method`` maps from, measured on ``img`` (e.g. a slide's tissue pixels as a
    (N, 1, 3) image): LAB mean/std for reinhard, the stain estimate for macenko."""
    if method == "reinhard":
        return lab_stats(img)
    if method == "macenko":
        return macenko_stains(img)
    raise ValueError(f"unknown stain normalisation {method!r}")


def effective_reference(method: str, reference: list[list[float]] | None) -> list[list[float]] | None:
    """The reference ``method`` maps to: the configured one, or the method's default; None for 'none'."""
    if method == "none":
        return None
    if reference is not None:
        return [list(map(float, r)) for r in reference]
    return [list(r) for r in (DEFAULT_REFERENCE if method == "reinhard" else MACENKO_REFERENCE)]


def stain_normalizer(method: str, reference: list[list[float]] | None = None,
                     source: object = None) -> Callable[[np.ndarray], np.ndarray] | None:
    """RGB uint8 -> RGB uint8 for ``data.stain_normalization`` (None for 'none'), to ``reference`` (default: the
    method's own), from ``source`` statistics (:func:`stain_source`; default: each image's own)."""
    if method == "none":
        return None
    fn = {"reinhard": reinhard, "macenko": macenko}.get(method)
    if fn is None:
        raise ValueError(f"unknown stain normalisation {method!r}")
    ref = tuple(map(tuple, effective_reference(method, reference)))
    return lambda img: fn(img, ref, source=source)


def measure_reference(method: str, images: Iterable[np.ndarray]) -> list[list[float]]:
    """A ``data.stain_reference`` measured on RGB uint8 images (e.g. a lab's own training images): reinhard, the
    mean of the images' LAB means and stds (as :data:`DEFAULT_REFERENCE` was measured on GlaS train); macenko, the
    median of the images' stain estimates, each vector scaled back to unit length (images without stain skipped).
    """
    stats = [stain_source(method, img) for img in images]
    if method == "reinhard":
        if not stats:
            raise ValueError("no images to measure a stain reference on")
        mean = np.mean([s[0] for s in stats], axis=0)
        std = np.mean([s[1] for s in stats], axis=0)
        return [[round(float(v), 2) for v in mean], [round(float(v), 2) for v in std]]
    found = [s for s in stats if s is not None]
    if not found:
        raise ValueError(f"none of the {len(stats)} images has {MIN_TISSUE_PIXELS} stained pixels (optical density "
                         f">= {OD_MIN} in every channel): are they H&E tissue?")
    med = np.median(np.stack(found), axis=0)
    med[:, :3] /= np.linalg.norm(med[:, :3], axis=1, keepdims=True)
    return [[round(float(v), 4) for v in row] for row in med]
