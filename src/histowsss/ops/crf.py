"""Dense CRF (Kraehenbuehl & Koltun) label refinement, as IRN's ``imutils.crf_inference_label``.

Needs the optional package ``pydensecrf2`` (``pip install 'histowsss[crf]'``), imported only when used.
The reference runs the CRF on the full-resolution image with sxy 3 (Gaussian) and 50 (bilateral); here it runs
on the stride-4 grid (the image box-downsampled to it), so the spatial widths are divided by 4 by default.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CrfUnavailable", "require_crf", "crf_refine_labels"]


class CrfUnavailable(ImportError):
    """pydensecrf2 is not installed."""


def require_crf():
    """Import pydensecrf (from the ``pydensecrf2`` package) or raise a clear error saying how to get it."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_labels
    except ImportError:
        raise CrfUnavailable("the dense CRF needs the optional package pydensecrf2: "
                             "`pip install 'histowsss[crf]'` (it compiles C++), or set ir_label.crf: false") from None
    return dcrf, unary_from_labels


def crf_refine_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, iterations: int = 10,
                      gt_prob: float = 0.7, gaussian_sxy: float = 1.0, gaussian_compat: float = 3.0,
                      bilateral_sxy: float = 12.5, bilateral_srgb: float = 5.0, bilateral_compat: float = 10.0
                      ) -> np.ndarray:
    """Refine a label map (h, w) of values 0..n_labels-1 with a dense CRF on ``image`` (h, w, 3) uint8."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} must have the same size")
    if n_labels < 2:
        return labels.copy()
    dcrf, unary_from_labels = require_crf()
    h, w = labels.shape
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(unary_from_labels(labels.astype(np.int32), n_labels, gt_prob=gt_prob, zero_unsure=False))
    d.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    rgb = np.array(image, dtype=np.uint8, order="C")  # a writable copy (PIL arrays are read-only)
    d.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=rgb,
                           compat=bilateral_compat)
    q = np.array(d.inference(iterations)).reshape(n_labels, h, w)
    return q.argmax(axis=0).astype(labels.dtype)
