"""Synthetic training crops with exact masks, stitched from regions known to be one class (image-mixing synthesis).

A patch whose label names one class only (by the mask-fraction rule: more than ``1 - min_fraction`` of its pixels
are that class), or a training image whose multi-label tissue label names one class only (patch data sets such as
WSSS4LUAD / LUAD-HistoSeg, whose labels list every tissue present), is a piece of tissue whose class is known pixel
for pixel. Mixing such pieces gives images whose masks are exact, with sharp class borders that pseudo-masks,
blurred by the CAM, lack. This is the synthesis of PistoSeg (Fang et al., AAAI 2023: a mosaic of single-label
patches) and HisynSeg (Fang et al., 2024: mosaics and Bezier-curve shapes), used here beside the pseudo-masks, not
instead of them (``train_seg.synthetic_fraction``). A synthetic crop is a mosaic of rectangular pieces of
single-class regions (each no larger than the smallest region), with one or two smooth closed shapes (Bezier curves
through random points around a centre) of another single-class region pasted on top. Its borders are artificial (a
cut through tissue, not a gland's outline), so it teaches where one texture ends, not what an outline looks like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.draw import polygon as fill_polygon

from histowsss.data.crops import patch_examples
from histowsss.data.manifest import Sample
from histowsss.config import DataConfig
from histowsss.data.patches import Patch, crop_padded
from histowsss.data.transforms import dihedral


@dataclass(frozen=True)
class Region:
    """A single-class rectangle of training image ``image``: top-left (y, x), height, width (scaled pixels)."""

    image: int
    y: int
    x: int
    h: int
    w: int


@dataclass(frozen=True)
class RegionPools:
    """Single-class regions per class id; ``most``: the largest square every region holds (a piece's longest side)."""

    pools: dict[int, list[Region]]
    most: int

    @property
    def classes(self) -> list[int]:
        """Class ids that have at least one single-class region."""
        return sorted(c for c, v in self.pools.items() if v)

    def counts(self) -> dict[int, int]:
        """Single-class regions per class id."""
        return {c: len(v) for c, v in sorted(self.pools.items())}


class SynthesisError(ValueError):
    """The training data hold no source of, or too few, single-class regions to synthesise from."""


def synthesis_source(data: DataConfig) -> str | None:
    """Where single-class tissue comes from: ``patches`` (``data.patches`` labelled by mask fraction), ``images``
    (multi-label tissue labels, no implicit background class: an image labelled with one class is all that class),
    or None when neither says a region is all one class (an image label with an implicit background, as in
    glas-malignant, or patch labels inherited from the image)."""
    if data.patches is not None:
        return "patches" if data.patches.label_rule == "mask_fraction" else None
    if data.has_labels and data.multi_label and data.classes.background is None:
        return "images"
    return None


SOURCE_FIX = ("synthetic crops need regions known to be one class: patch labels read from masks (data.patches with "
              "label_rule: mask_fraction) or multi-label tissue labels without a background class (data.multi_label: "
              "true, data.classes.background: null; an image labelled with one class is all that class)")


def single_class_pools(samples: list[Sample], data: DataConfig, sizes: list[tuple[int, int]]) -> RegionPools:
    """The regions of the training images known to be one class, by class (:func:`synthesis_source`): every patch
    whose mask-fraction label names one class, or every image whose tissue label names one class.

    Raises :class:`SynthesisError` without such a source, or when fewer than two classes have such regions.
    """
    source = synthesis_source(data)
    if source is None:
        raise SynthesisError(f"{SOURCE_FIX}; set train_seg.synthetic_fraction=0")
    pools: dict[int, list[Region]] = {c: [] for c in range(len(data.classes.names))}
    if source == "patches":
        for ex in patch_examples(samples, data, sizes):
            hot = np.flatnonzero(ex.target > 0)
            if len(hot) == 1:
                pools[int(hot[0])].append(Region(ex.image, ex.y, ex.x, ex.size, ex.size))
    else:
        for i, (s, (h, w)) in enumerate(zip(samples, sizes)):
            hot = np.flatnonzero(s.target(data.classes) > 0)
            if len(hot) == 1:
                pools[int(hot[0])].append(Region(i, 0, 0, h, w))
    regions = [r for v in pools.values() for r in v]
    what = "patches" if source == "patches" else "images"
    out = RegionPools(pools, min((min(r.h, r.w) for r in regions), default=0))
    if len(out.classes) < 2:
        names = {data.classes.names[c]: n for c, n in out.counts().items()}
        raise SynthesisError(f"synthetic crops need single-class {what} of at least two classes; the training "
                             f"images have {names}; set train_seg.synthetic_fraction=0")
    if out.most < 8:
        raise SynthesisError(f"the smallest single-class {what[:-1]} is {out.most} px across, too small to cut "
                             "pieces from; set train_seg.synthetic_fraction=0")
    return out


def cut_sizes(length: int, most: int, rng: np.random.Generator) -> list[int]:
    """Random lengths summing to ``length``, each at most ``most`` and mostly at least ``most // 4`` (a side no longer
    than ``most`` is cut in two three times in four), for a mosaic whose pieces each fit in a region."""
    n = max(1, math.ceil(length / most))
    if n == 1 and length >= 8 and rng.random() < 0.75:
        n = 2
    lo = max(1, min(most // 4, length // n))
    for _ in range(20):
        cuts = np.sort(rng.integers(1, length, n - 1)) if n > 1 else np.array([], dtype=int)
        parts = np.diff(np.concatenate([[0], cuts, [length]])).astype(int)
        if parts.min() >= lo and parts.max() <= most:
            return parts.tolist()
    base = [length // n] * n  # equal pieces (each <= most since n >= length / most)
    base[-1] += length - sum(base)
    return base


def bezier_shape(side: int, rng: np.random.Generator, points: int = 7) -> np.ndarray:
    """A smooth closed random shape filling part of a ``side`` square (bool mask): cubic Bezier segments through
    ``points`` points at random radii around the centre, tangents from their neighbours (Catmull-Rom)."""
    c = (side - 1) / 2
    ang = np.sort(rng.uniform(0, 2 * math.pi, points))
    rad = rng.uniform(0.45, 1.0, points) * (side / 2 - 1)
    p = np.stack([c + rad * np.sin(ang), c + rad * np.cos(ang)], 1)
    prev, nxt = np.roll(p, 1, 0), np.roll(p, -1, 0)
    t = np.linspace(0, 1, 24, endpoint=False)[:, None]
    curve = []
    for i in range(points):
        p0, p3 = p[i], nxt[i]
        p1 = p0 + (nxt[i] - prev[i]) / 6
        p2 = p3 - (np.roll(p, -2, 0)[i] - p0) / 6
        curve.append((1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3)
    pts = np.clip(np.concatenate(curve), 0, side - 1)
    mask = np.zeros((side, side), dtype=bool)
    rr, cc = fill_polygon(pts[:, 0], pts[:, 1], (side, side))
    mask[rr, cc] = True
    return mask


def _piece(images: list[np.ndarray], pools: RegionPools, cls: int, h: int, w: int,
           rng: np.random.Generator) -> np.ndarray:
    """An (h, w) window of a random single-class region of class ``cls``, in a random dihedral pose."""
    r = pools.pools[cls][int(rng.integers(len(pools.pools[cls])))]
    if r.h == r.w:
        tile = crop_padded(images[r.image], Patch(r.y, r.x, r.h))
    else:
        tile = images[r.image][r.y : r.y + r.h, r.x : r.x + r.w]
    tile = dihedral(tile, int(rng.integers(8)))
    y = int(rng.integers(0, tile.shape[0] - h + 1))
    x = int(rng.integers(0, tile.shape[1] - w + 1))
    return tile[y : y + h, x : x + w]


def synthesize(images: list[np.ndarray], pools: RegionPools, side: int, rng: np.random.Generator,
               shapes: tuple[int, int] = (1, 2)) -> tuple[np.ndarray, np.ndarray]:
    """A ``side`` square image (uint8 RGB) and its class map (uint8): a mosaic of single-class pieces, with
    ``shapes`` (low, high) smooth shapes of other classes pasted on top."""
    classes = pools.classes
    most = pools.most
    img = np.zeros((side, side, 3), dtype=np.uint8)
    lab = np.zeros((side, side), dtype=np.uint8)
    y0 = 0
    for h in cut_sizes(side, most, rng):
        x0 = 0
        for w in cut_sizes(side, most, rng):
            c = classes[int(rng.integers(len(classes)))]
            img[y0 : y0 + h, x0 : x0 + w] = _piece(images, pools, c, h, w, rng)
            lab[y0 : y0 + h, x0 : x0 + w] = c
            x0 += w
        y0 += h
    for _ in range(int(rng.integers(shapes[0], shapes[1] + 1))):
        s = int(rng.integers(max(8, min(most, side) // 3), min(most, side) + 1))
        m = bezier_shape(s, rng)
        y, x = int(rng.integers(0, side - s + 1)), int(rng.integers(0, side - s + 1))
        under = np.bincount(lab[y : y + s, x : x + s][m], minlength=max(classes) + 1)
        others = [c for c in classes if c != int(under.argmax())]  # differ from most of what it covers
        c = others[int(rng.integers(len(others)))]
        tex = _piece(images, pools, c, s, s, rng)
        img[y : y + s, x : x + s][m] = tex[m]
        lab[y : y + s, x : x + s][m] = c
    return img, lab
