"""QuPath annotations (GeoJSON) -> class masks of slide tiles, so tiles of annotated slides can be evaluated.

QuPath's "Export objects as GeoJSON" writes a FeatureCollection (or a bare list of Features) of Polygon /
MultiPolygon geometries in level-0 pixel coordinates, each with ``properties.classification.name``. Features
whose class is not listed in ``classes`` are an error naming the class (pass ``--ignore-unknown`` to skip them);
features with no classification count as ``default_class`` when one is given. Rasterising assumes the listed
classes were annotated exhaustively: pixels under no annotation take class 0 (the first listed, e.g. background).
Later features are drawn over earlier ones; a feature's holes are no part of it, so what lies under a hole is
what earlier features drew there (class 0 where none did: a QuPath "subtract" around another class keeps it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class AnnotationError(ValueError):
    """The annotation file cannot be used; the message names the file, the feature and the fix."""


@dataclass
class Annotations:
    """Class-indexed shapely geometries of one slide, with a spatial index."""

    path: Path
    geometries: list[Any]
    labels: list[int]

    def __post_init__(self) -> None:
        from shapely import STRtree

        self._tree = STRtree(self.geometries) if self.geometries else None

    def rasterize(self, x0: float, y0: float, w0: float, h0: float, size: tuple[int, int]) -> np.ndarray:
        """uint8 (size[1], size[0]) class mask of the level-0 box (x0, y0, w0, h0) at ``size`` (w, h)."""
        from shapely.geometry import box
        from skimage.draw import polygon as fill_polygon

        w, h = size
        out = np.zeros((h, w), np.uint8)
        if self._tree is None:
            return out
        hits = sorted(int(i) for i in self._tree.query(box(x0, y0, x0 + w0, y0 + h0)))
        sx, sy = w / w0, h / h0

        def inside(coords) -> tuple[np.ndarray, np.ndarray]:
            # pixel (r, c) covers [c, c+1) x [r, r+1) and is inside when its centre lies inside the ring
            xy = np.asarray(coords, np.float64)
            return fill_polygon((xy[:, 1] - y0) * sy - 0.5, (xy[:, 0] - x0) * sx - 0.5, shape=(h, w))

        covered = np.zeros((h, w), bool)  # one polygon's pixels at a time: its ring less its holes
        for i in hits:
            for poly in getattr(self.geometries[i], "geoms", [self.geometries[i]]):
                rr, cc = inside(poly.exterior.coords)
                covered[rr, cc] = True
                for hole in poly.interiors:  # a hole is no part of this feature: what lies under it stays
                    covered[inside(hole.coords)] = False
                keep = covered[rr, cc]
                out[rr[keep], cc[keep]] = self.labels[i]
                covered[rr, cc] = False
        return out


def read_annotations(path: Path, classes: list[str], default_class: str | None = None,
                     ignore_unknown: bool = False) -> Annotations:
    """Read a QuPath GeoJSON export; class index = position of the feature's class name in ``classes``."""
    from shapely.geometry import MultiPolygon, shape
    from shapely.validation import make_valid

    from histowsss.export.geojson import polygons_of

    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found; export it from QuPath (File > Export objects "
                                "as GeoJSON) or fix the path in the slide manifest")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(f"{path}: not a GeoJSON file ({e})") from e
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features", [])
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    elif isinstance(doc, list):
        feats = doc
    else:
        raise AnnotationError(f"{path}: expected a FeatureCollection, a Feature or a list of Features")
    geoms, labels = [], []
    for k, f in enumerate(feats):
        g = (f or {}).get("geometry")
        if not g or g.get("type") not in ("Polygon", "MultiPolygon"):
            continue  # points, lines (e.g. QuPath's point annotations) carry no area
        props = f.get("properties") or {}
        cls = props.get("classification")
        name = cls.get("name") if isinstance(cls, dict) else cls
        if name is None:
            name = default_class
            if name is None:
                raise AnnotationError(f"{path}: feature {k} has no classification; classify it in QuPath or pass "
                                      "--default-class")
        if name not in classes:
            if ignore_unknown:
                continue
            raise AnnotationError(f"{path}: feature {k} has class {name!r}, not one of --mask-classes "
                                  f"({', '.join(classes)}); add it there or pass --ignore-unknown")
        try:
            geom = shape(g)
        except Exception as e:
            raise AnnotationError(f"{path}: feature {k} has an unreadable geometry ({e})") from e
        if not geom.is_valid:
            geom = make_valid(geom)
        polys = polygons_of(geom)
        if not polys:
            continue
        geoms.append(polys[0] if len(polys) == 1 else MultiPolygon(polys))
        labels.append(classes.index(name))
    return Annotations(path, geoms, labels)
