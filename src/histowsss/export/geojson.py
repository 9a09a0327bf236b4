"""Label maps -> QuPath-importable GeoJSON: one annotation per connected region per non-background class.

Geometry: each 8-connected region of a class is traced with marching squares (``skimage.measure.find_contours``
on the region's 0/1 mask, level 0.5, foreground fully connected), giving its outer boundary and the boundaries of
its holes; the largest ring is the shell, the others are holes. Coordinates follow QuPath's convention (pixel
(r, c) covers [c, c+1] x [r, r+1], so a traced point at index (r, c) is (c + 0.5, r + 0.5)) and are divided by
``scale`` (the data.image_scale the map was computed at; per axis (y, x), the map's size over the image's, where
rounding made them differ) to give level-0 pixels of the original image. Polygons are simplified by ``simplify``
level-0 pixels (topology preserved) and repaired with ``shapely.make_valid``; holes, like regions, smaller than
``min_area`` are left out (filled).

Each feature: ``{"type": "Feature", "id": uuid, "geometry": Polygon | MultiPolygon, "properties": {"objectType":
"annotation", "classification": {"name": ..., "color": [r, g, b]}, "isLocked": false, "measurements": {...}}}``
(QuPath reads ``objectType`` and ``classification`` inside ``properties``).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

IGNORE = 255
EDGE = 2  # min_probability leaves out a region's pixels within this many (working) pixels of its outline
_NAMESPACE = uuid.UUID("6f1d2a52-5f43-4d4c-9a37-1b0d7c3e9a11")


def hex_to_rgb(color: str) -> list[int]:
    """'#rrggbb' -> [r, g, b] (QuPath's colour list)."""
    c = color.lstrip("#")
    if len(c) != 6:
        raise ValueError(f"colour {color!r} must look like '#rrggbb'")
    return [int(c[i : i + 2], 16) for i in (0, 2, 4)]


def region_polygons(mask: np.ndarray, scale: float | tuple[float, float] = 1.0, simplify: float = 0.5,
                    min_area: float = 0.0, offset: tuple[float, float] = (0.0, 0.0), with_pixels: bool = False
                    ) -> Iterator[Any]:
    """Shapely (Multi)Polygons, one per 8-connected region of a boolean ``mask``, in level-0 coordinates, yielded
    one at a time (a slide's regions are not all held at once).

    ``scale``: ``mask`` pixels per level-0 pixel, one number or (y, x). ``offset`` (y, x) is added (in ``mask``
    pixels) before scaling; regions and holes whose level-0 area is below ``min_area`` are dropped (a dropped hole
    is filled). ``with_pixels``: (polygon, (slices, boolean mask of the region within them)) pairs.
    """
    from scipy import ndimage
    from shapely import make_valid
    from shapely.geometry import MultiPolygon, Polygon
    from skimage.measure import find_contours

    sy, sx = (scale, scale) if np.isscalar(scale) else scale
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        # 1 byte per pixel: find_contours makes its own float64 copy, the largest buffer of a slide's export
        comp = np.pad(lab[sl] == i, 1).view(np.uint8)
        rings = []
        for ctr in find_contours(comp, 0.5, fully_connected="high"):
            if len(ctr) < 4:
                continue
            ys = (ctr[:, 0] - 1 + sl[0].start + offset[0] + 0.5) / sy
            xs = (ctr[:, 1] - 1 + sl[1].start + offset[1] + 0.5) / sx
            ring = Polygon(np.column_stack([xs, ys]))
            if ring.area > 0:
                rings.append(ring)
        if not rings:
            continue
        rings.sort(key=lambda p: p.area, reverse=True)
        shell, holes = rings[0], rings[1:]
        inner = [h.exterior.coords for h in holes if h.area >= min_area and shell.contains(h.representative_point())]
        poly = Polygon(shell.exterior.coords, inner)
        if not poly.is_valid:
            poly = make_valid(poly)
        if simplify > 0:
            poly = poly.simplify(simplify, preserve_topology=True)
        polys = polygons_of(poly)
        if not polys:
            continue
        geom = polys[0] if len(polys) == 1 else MultiPolygon(polys)
        if geom.area >= min_area:
            yield (geom, (sl, lab[sl] == i)) if with_pixels else geom


def polygons_of(geom) -> list:
    """The non-empty polygons of a shapely geometry (Polygon, MultiPolygon or collection); lines/points dropped."""
    from shapely.geometry import MultiPolygon, Polygon

    if isinstance(geom, Polygon):
        return [geom] if not geom.is_empty and geom.area > 0 else []
    if isinstance(geom, MultiPolygon):
        return [g for g in geom.geoms if g.area > 0]
    if hasattr(geom, "geoms"):  # GeometryCollection (lines/points from make_valid are dropped)
        return [g for sub in geom.geoms for g in polygons_of(sub)]
    return []


def _round_coords(obj: Any, ndigits: int) -> Any:
    if isinstance(obj, (list, tuple)):
        if obj and isinstance(obj[0], (int, float)):
            return [round(float(v), ndigits) for v in obj]
        return [_round_coords(o, ndigits) for o in obj]
    return obj


def _clip(geom, frame: tuple[float, float, float, float]):
    """``geom`` cut to the box ``frame`` (x0, y0, x1, y1): a Polygon or MultiPolygon, or None when nothing is left."""
    from shapely.geometry import MultiPolygon, Polygon, box

    x0, y0, x1, y1 = frame
    minx, miny, maxx, maxy = geom.bounds
    if minx >= x0 and miny >= y0 and maxx <= x1 and maxy <= y1:
        return geom
    cut = geom.intersection(box(x0, y0, x1, y1))
    parts = [g for g in getattr(cut, "geoms", [cut]) if isinstance(g, Polygon) and g.area > 0]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def labels_to_features(labels: np.ndarray, class_names: Sequence[str], colors: Sequence[str],
                       background: int | None = 0, scale: float | tuple[float, float] = 1.0, simplify: float = 0.5,
                       min_area: float = 0.0, id_prefix: str = "", ndigits: int = 2,
                       probs: np.ndarray | None = None, bounds: tuple[float, float] | None = None,
                       origin: tuple[float, float] = (0.0, 0.0)) -> list[dict]:
    """GeoJSON features of every non-background class of a class-id map (IGNORE pixels are skipped).

    ``bounds`` (width, height) of the frame that starts at ``origin``, in output coordinates: polygons are cut to
    that box (a slide's output grid rounds its last row and column up, past the slide's edge; QuPath shows a slide
    with openslide bounds cropped to them, ``Slide.qupath_frame``), then ``origin`` is subtracted from every
    coordinate, so the GeoJSON is in the frame's own pixels.

    ``probs`` (C, h, w) on the grid of ``labels``, values in [0, 1] (or uint8, 255 = 1): each region also gets the
    measurements ``mean_probability`` and ``min_probability`` of its class over its pixels at least :data:`EDGE`
    pixels inside its outline (all of them in a thinner region: where the class changes the probability is near
    the decision point whatever the region, so the outline says nothing of it). QuPath lists them per annotation,
    so uncertain regions can be sorted out there.
    """
    from scipy import ndimage
    from shapely.geometry import mapping

    if len(colors) != len(class_names):
        raise ValueError(f"need one colour per class ({len(class_names)}), got {len(colors)}")
    if probs is not None and probs.shape != (len(class_names), *labels.shape):
        raise ValueError(f"probs {probs.shape} must be (classes, *labels.shape) = {(len(class_names), *labels.shape)}")
    unit = 1.0 / 255 if probs is not None and probs.dtype == np.uint8 else 1.0  # uint8 maps: 255 = probability 1
    feats = []
    for c, name in enumerate(class_names):
        if c == background:
            continue
        mask = labels == c
        if not mask.any():
            continue
        for j, (geom, (sl, pixels)) in enumerate(region_polygons(mask, scale=scale, simplify=simplify,
                                                                  min_area=min_area, with_pixels=True)):
            if bounds is not None:
                geom = _clip(geom, (origin[0], origin[1], origin[0] + bounds[0], origin[1] + bounds[1]))
                if geom is None:
                    continue
            if origin != (0, 0):
                from shapely.affinity import translate

                geom = translate(geom, -origin[0], -origin[1])
            measurements = {"area_px": round(float(geom.area), 1)}
            if probs is not None:
                p = np.asarray(probs[c][sl]).astype(np.float32) * unit
                inside = ndimage.binary_erosion(pixels, iterations=EDGE)  # (off the outline)
                p = p[inside if inside.any() else pixels]
                measurements.update(mean_probability=round(float(p.mean()), 4),
                                    min_probability=round(float(p.min()), 4))
            g = mapping(geom)
            feats.append({
                "type": "Feature",
                "id": str(uuid.uuid5(_NAMESPACE, f"{id_prefix}/{name}/{j}")),
                "geometry": {"type": g["type"], "coordinates": _round_coords(g["coordinates"], ndigits)},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": str(name), "color": hex_to_rgb(colors[c])},
                    "isLocked": False,
                    "measurements": measurements,
                },
            })
    return feats


def feature_id_prefix(model: str, path: Path) -> str:
    """What a predicted region's id is derived from besides its class and number: the model (its weights' digest,
    ``segnet_io.weights_digest``) and the input, so the same model gives the same ids again and two models' regions
    never share one (QuPath would take them for one object)."""
    from histowsss.data.io import image_stem

    return f"{model}/{image_stem(path)}"


_QUPATH_TILE = re.compile(r"\[([^\[\]]*\bx=\s*\d+[^\[\]]*)\]")


def qupath_tile_placement(path: Path) -> tuple[float, float, float]:
    """(downsample d, x, y) of a tile QuPath's tile exporter named ``<slide> [d=2,x=4096,y=8192,w=512,h=512].jpg``
    (``d`` is 1 when absent): its pixel (u, v) lies at level-0 pixel (x + d u, y + d v) of the slide."""
    m = None
    for m in _QUPATH_TILE.finditer(path.name):
        pass
    fields = dict(kv.split("=", 1) for kv in (m.group(1).replace(" ", "").split(",") if m else []) if "=" in kv)
    try:
        return float(fields.get("d", 1)), float(fields["x"]), float(fields["y"])
    except (KeyError, ValueError):
        raise ValueError(f"{path}: --qupath-tiles needs names as QuPath's tile exporter writes them, "
                         "'<slide> [d=2,x=4096,y=8192,w=512,h=512].<ext>' (x and y: the tile's level-0 corner, d: "
                         "its downsample); this name has no such brackets") from None


def qupath_tile_extent(path: Path) -> tuple[float, float] | None:
    """(w, h): the level-0 width and height a QuPath tile's name gives (``w=512,h=512``); None when it gives none."""
    m = None
    for m in _QUPATH_TILE.finditer(path.name):
        pass
    fields = dict(kv.split("=", 1) for kv in (m.group(1).replace(" ", "").split(",") if m else []) if "=" in kv)
    try:
        return float(fields["w"]), float(fields["h"])
    except (KeyError, ValueError):
        return None


def place_features(features: list[dict], d: float, x: float, y: float, ndigits: int = 2) -> list[dict]:
    """The features of a tile moved onto its slide: every coordinate (u, v) becomes (x + d u, y + d v), and
    ``area_px`` is scaled by d² (level-0 pixels)."""
    from shapely.affinity import affine_transform
    from shapely.geometry import mapping, shape

    out = []
    for f in features:
        g = mapping(affine_transform(shape(f["geometry"]), [d, 0, 0, d, x, y]))
        props = dict(f["properties"])
        if "area_px" in props.get("measurements", {}):
            props["measurements"] = {**props["measurements"],
                                     "area_px": round(props["measurements"]["area_px"] * d * d, 1)}
        out.append({**f, "geometry": {"type": g["type"], "coordinates": _round_coords(g["coordinates"], ndigits)},
                    "properties": props})
    return out


def feature_collection(features: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": features}
