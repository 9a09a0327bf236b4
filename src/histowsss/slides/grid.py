"""The tile grid of a slide at the network's working resolution, restricted to tiles that hold tissue.

Coordinates: ``downsample`` = level-0 pixels per working pixel. A tile at working pixel (x, y) of
``size`` covers the level-0 box ``(x * downsample, y * downsample, size * downsample, size * downsample)``; grid
tiles sit at multiples of their size, (row, col) = (y // size, x // size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """A square box of ``size`` working pixels with its top-left corner at working pixel (x, y)."""

    x: int
    y: int
    size: int

    @property
    def row(self) -> int:
        """Row of a grid tile (corners on multiples of the size)."""
        return self.y // self.size

    @property
    def col(self) -> int:
        return self.x // self.size

    def level0_box(self, downsample: float, margin: int = 0) -> tuple[float, float, float, float]:
        """(x0, y0, w0, h0) in level-0 pixels of the tile grown by ``margin`` working pixels on every side."""
        return ((self.x - margin) * downsample, (self.y - margin) * downsample,
                (self.size + 2 * margin) * downsample, (self.size + 2 * margin) * downsample)


def working_size(level0_size: tuple[int, int], downsample: float) -> tuple[int, int]:
    """(width, height) of the slide in working pixels."""
    return max(1, int(math.ceil(level0_size[0] / downsample))), max(1, int(math.ceil(level0_size[1] / downsample)))


def tissue_fraction(tile: Tile, downsample: float, tissue: np.ndarray, tissue_downsample: float) -> float:
    """Fraction of the tile's area that the tissue mask (at ``tissue_downsample`` level-0 px per px) marks."""
    x0, y0, w0, h0 = tile.level0_box(downsample)
    th, tw = tissue.shape
    c0, r0 = int(math.floor(x0 / tissue_downsample)), int(math.floor(y0 / tissue_downsample))
    c1, r1 = int(math.ceil((x0 + w0) / tissue_downsample)), int(math.ceil((y0 + h0) / tissue_downsample))
    total = max(1, (c1 - c0) * (r1 - r0))
    return float(tissue[max(0, r0) : min(th, r1), max(0, c0) : min(tw, c1)].sum()) / total


def tissue_tiles(level0_size: tuple[int, int], downsample: float, size: int, tissue: np.ndarray,
                 tissue_downsample: float, min_tissue: float = 0.0) -> list[Tile]:
    """Tiles of ``size`` working pixels covering the slide whose tissue fraction is above ``min_tissue``
    (0: any tissue at all), in row-major order."""
    if size < 1:
        raise ValueError(f"tile size must be positive, got {size}")
    ww, wh = working_size(level0_size, downsample)
    rows, cols = int(math.ceil(wh / size)), int(math.ceil(ww / size))
    out = []
    for r in range(rows):
        for c in range(cols):
            t = Tile(c * size, r * size, size)
            f = tissue_fraction(t, downsample, tissue, tissue_downsample)
            if f > min_tissue:
                out.append(t)
    return out


def working_downsample(path: object, slide_mpp: float | None, train_mpp: float | None, image_scale: float = 1.0,
                       downsample: float | None = None) -> float:
    """Level-0 slide pixels per working pixel: ``downsample`` if given, else the network's resolution
    (``train_mpp / image_scale`` microns per pixel) over the slide's ``slide_mpp``. Errors name the fix."""
    if downsample is not None:
        if downsample <= 0:
            raise ValueError(f"--downsample must be positive, got {downsample}")
        return float(downsample)
    if train_mpp is None:
        raise ValueError(f"{path}: the run config does not say the training images' resolution (data.mpp), so the "
                         "slide cannot be read at it: pass --train-mpp (microns per pixel of the training images), "
                         "or --downsample (level-0 slide pixels per network pixel); for the next run, set data.mpp "
                         "before training (`histowsss init --mpp`)")
    if slide_mpp is None:
        raise ValueError(f"{path}: the slide's metadata has no microns-per-pixel value: pass --slide-mpp (its level-0 "
                         "resolution) or --downsample (level-0 slide pixels per network pixel)")
    for what, v in (("--slide-mpp (or the slide's metadata)", slide_mpp), ("--train-mpp (or data.mpp)", train_mpp)):
        if not v > 0:
            raise ValueError(f"{path}: {what} is {v}; microns per pixel must be positive (e.g. 0.25 at 40x, 0.5 at "
                             "20x)")
    return (train_mpp / image_scale) / slide_mpp
