"""Load an image as every step sees it: scaled and stain-normalised as the data config says."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histowsss.config import DataConfig
from histowsss.data.io import read_rgb


def load_image(path: Path | str, data: DataConfig) -> np.ndarray:
    """RGB uint8 image at ``data.image_scale``, stain-normalised if ``data.stain_normalization`` says so."""
    img = read_rgb(path, scale=data.image_scale)
    if data.stain_normalization != "none":
        from histowsss.data.stain import stain_normalizer

        img = stain_normalizer(data.stain_normalization, data.stain_reference)(img)
    return img
