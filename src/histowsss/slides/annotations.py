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
import warnings
from dataclasses import dataclass, field
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
    skipped: dict[str, int] = field(default_factory=dict)  # why -> how many features were left out
    feature_ids: list[int] = field(default_factory=list)  # each geometry's feature index in the file

    def outside(self, width: float, height: float) -> list[int]:
        """Feature indices of the geometries wholly outside the frame (0, 0, width, height): a wrong slide, a wrong
        frame (QuPath's cropped one, ``--no-crop``) or a wrong scale."""
        out = []
        for k, g in zip(self.feature_ids or range(len(self.geometries)), self.geometries):
            x0, y0, x1, y1 = g.bounds
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                out.append(k)
        return out

    def notes(self, width: float, height: float) -> list[str]:
        """Warnings on what the masks will not show: features left out, features outside the slide's frame, no
        area at all (every tile mask class 0)."""
        out = [f"{n} feature(s) {why}" for why, n in self.skipped.items()]
        far = self.outside(width, height)
        if far:
            out.append(f"feature(s) {', '.join(map(str, far[:10]))}{' ...' if len(far) > 10 else ''} lie wholly "
                       f"outside the slide's {width:g}x{height:g} frame: none of their pixels reaches a mask (another "
                       "slide's annotations? the image opened in QuPath with another frame: see --no-crop)")
        if not self.geometries or len(far) == len(self.geometries):
            out.append("no area annotation lands on the slide: every tile mask is class 0")
        return out

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
        raise AnnotationError(f"{path}: not a GeoJSON file ({e}); export it again from QuPath (File > Export "
                              "objects as GeoJSON), or fix the JSON where the message points") from e
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features", [])
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    elif isinstance(doc, list):
        feats = doc
    else:
        raise AnnotationError(f"{path}: expected a FeatureCollection, a Feature or a list of Features")
    geoms, labels, ids = [], [], []
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    for k, f in enumerate(feats):
        g = (f or {}).get("geometry")
        if not g or g.get("type") not in ("Polygon", "MultiPolygon", "GeometryCollection"):
            # points, lines (e.g. QuPath's point annotations) carry no area
            kind = (g or {}).get("type")
            skip("without an area (points, lines or no geometry) left out"
                 if not kind or kind in ("Point", "MultiPoint", "LineString", "MultiLineString") else
                 f"of geometry type {kind!r}, which has no area GeoJSON knows, left out")
            continue
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
                skip(f"of class {name!r} left out (--ignore-unknown)")
                continue
            twin = [c for c in classes if c.lower() == str(name).lower()]
            raise AnnotationError(f"{path}: feature {k} has class {name!r}, not one of --mask-classes "
                                  f"({', '.join(classes)})" + (f"; names are case-sensitive: write {name!r} in "
                                                                f"--mask-classes (not {twin[0]!r})" if twin else
                                                                "; add it there or pass --ignore-unknown"))
        try:
            with warnings.catch_warnings():  # (shapely's RuntimeWarning on a NaN vertex: the error below says it)
                warnings.simplefilter("ignore", RuntimeWarning)
                geom = shape(g)
        except Exception as e:
            raise AnnotationError(f"{path}: feature {k} has an unreadable geometry ({e})") from e
        if not _finite(geom):
            raise AnnotationError(f"{path}: feature {k} has coordinates that are not finite numbers (NaN or "
                                  "infinity); fix or delete it in QuPath and export again")
        if not geom.is_valid:
            geom = make_valid(geom)
        polys = polygons_of(geom)
        if not polys:
            skip("with an empty area left out")
            continue
        geoms.append(polys[0] if len(polys) == 1 else MultiPolygon(polys))
        labels.append(classes.index(name))
        ids.append(k)
    return Annotations(path, geoms, labels, skipped, ids)


def _finite(geom) -> bool:
    """Whether every coordinate of a geometry is finite (no NaN or infinite vertex)."""
    import shapely

    return bool(np.isfinite(shapely.get_coordinates(geom)).all())
