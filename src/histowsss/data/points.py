"""Sparse point annotations: a few clicked pixels per image, each with a class.

Sources (joined): the manifest's ``data.points_column`` (``"x y class; x y class"``, commas also accepted between
the numbers) and ``points.file``: a CSV (columns ``image`` = the manifest name, ``x``, ``y``, ``class``) or a folder
of QuPath point exports, one per image, named ``<image name>.geojson``. Coordinates
are level-0 pixels of the image (x = column, y = row; QuPath's point coordinates), classes are names of
``data.classes`` (or their indices). A click labels the disk of ``points.radius`` level-0 pixels around it, at
least the pixel or grid cell it falls in; where disks of different classes overlap, the later click wins.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histowsss.config import ClassMap, RunConfig
from histowsss.data.manifest import ManifestError, Sample, read_table

IGNORE = 255


class PointsError(ValueError):
    """Clicks that cannot be used; the message names the file or image, the entry and the fix."""


@dataclass(frozen=True)
class Point:
    """One click: level-0 pixel coordinates and a class index."""

    x: float
    y: float
    cls: int


def _class_index(token: str, classes: ClassMap, where: str) -> int:
    """The class a click names: a class name, or its index (0 .. classes - 1)."""
    if token in classes.names:
        return classes.index(token)
    if token.isdigit() and int(token) < len(classes.names):
        return int(token)
    same = [n for n in classes.names if " ".join(n.lower().split()) == " ".join(token.lower().split())]
    hint = (f" (written {same[0]!r} in the config: class names are matched as written, so rename it in QuPath or "
            "the file)" if same else f" (or an index 0-{len(classes.names) - 1})" if token.isdigit() else "")
    raise PointsError(f"{where}: unknown class {token!r}; known classes: {', '.join(classes.names)}{hint}")


def parse_points(text: str, classes: ClassMap, where: str = "points") -> list[Point]:
    """Parse ``"x y class; x y class"`` (commas or spaces between the three fields); the first bad click raises
    PointsError (:func:`parse_points_each` lists them all)."""
    out = []
    for k, part in enumerate(p.strip() for p in (text or "").split(";")):
        if not part:
            continue
        out.append(_parse_click(part, k, classes, where))
    return out


def parse_points_each(text: str, classes: ClassMap, where: str = "points") -> tuple[list[Point], list[str]]:
    """The clicks of a cell that parse, and a message for each that does not (``histowsss data check``)."""
    out, errors = [], []
    for k, part in enumerate(p.strip() for p in (text or "").split(";")):
        if part:
            try:
                out.append(_parse_click(part, k, classes, where))
            except PointsError as e:
                errors.append(str(e))
    return out, errors


def _parse_click(part: str, k: int, classes: ClassMap, where: str) -> Point:
    """One ``x y class`` (the ``k``-th click of its cell)."""
    x, y, name = click_fields(part, k, where)
    return Point(x, y, _class_index(name, classes, f"{where}: click {k + 1}"))


def click_fields(part: str, k: int, where: str) -> tuple[float, float, str]:
    """(x, y, class name as written) of one ``x y class`` (the ``k``-th click of its cell); PointsError naming
    ``where`` when it is not one (classes are not checked here: :func:`parse_points` does)."""
    fields = [f for f in re.split(r"[,\s]+", part, maxsplit=2) if f]  # the class name may hold spaces
    if len(fields) == 3:
        fields[2] = fields[2].strip(", \t")
    if len(fields) != 3 or not fields[2]:
        raise PointsError(f"{where}: click {k + 1} {part!r} must be 'x y class'")
    try:
        x, y = float(fields[0]), float(fields[1])
    except ValueError:
        raise PointsError(f"{where}: click {k + 1} {part!r}: x and y must be numbers (write 'x y class', e.g. "
                          "'120 45 gland'; clicks are separated by ';')") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise PointsError(f"{where}: click {k + 1} {part!r}: x and y must be finite numbers (level-0 pixels of the "
                          "image, e.g. '120 45 gland')")
    return x, y, fields[2]


def _parse_geojson_points(path: Path, classes: ClassMap) -> tuple[list[Point], list[str]]:
    """Clicks of one QuPath GeoJSON export (Point / MultiPoint features with a classification; other geometries
    are skipped), and every feature's problem."""
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return [], [f"{path.name}: not a GeoJSON file ({e})"]
    feats = doc.get("features", []) if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" else (
        [doc] if isinstance(doc, dict) and doc.get("type") == "Feature" else doc if isinstance(doc, list) else None)
    if feats is None:
        return [], [f"{path.name}: expected a FeatureCollection, a Feature or a list of Features (QuPath: File > "
                    "Export objects as GeoJSON)"]
    out, errors = [], []
    for k, f in enumerate(feats):
        g = (f or {}).get("geometry") or {}
        coords = [g.get("coordinates")] if g.get("type") == "Point" else (
            g.get("coordinates") or [] if g.get("type") == "MultiPoint" else None)
        if coords is None:
            continue  # areas and lines: not clicks
        cls = ((f.get("properties") or {}).get("classification") or {})
        name = cls.get("name") if isinstance(cls, dict) else cls
        where = f"{path.name}: feature {k + 1}"  # (counted from 1, as QuPath lists objects)
        if not name:
            errors.append(f"{where}: a point without a classification; classify it in QuPath (the class of the "
                          "click)")
            continue
        try:
            c = _class_index(str(name), classes, where)
        except PointsError as e:
            errors.append(str(e))
            continue
        for xy in coords:
            try:
                x, y = float(xy[0]), float(xy[1])
            except (TypeError, ValueError, IndexError):
                errors.append(f"{where}: coordinates {xy!r} are not [x, y]")
                continue
            if not (math.isfinite(x) and math.isfinite(y)):
                errors.append(f"{where}: coordinates {xy!r} are not finite")
                continue
            out.append(Point(x, y, c))
    return out, errors


def names_rule(points_file: Path | str) -> str:
    """How a points file names its images, for messages about names the manifest lacks."""
    rule = ("an export's file name less .geojson" if Path(points_file).is_dir() else "the image column")
    return (f"{rule} must be the manifest's image name: its 'name' column, else the image's file name without its "
            "extension")


def points_folder_files(path: Path) -> list[Path]:
    """The QuPath exports of a points folder: ``<image name>.geojson`` (or ``.json``), sorted."""
    return sorted(f for f in Path(path).iterdir() if f.is_file() and f.suffix.lower() in (".geojson", ".json"))


def parse_points_file(path: Path | str, classes: ClassMap) -> tuple[dict[str, list[Point]], list[str]]:
    """Clicks of a points file by image name, and every row's problem (``"row N: ..."``, N its line in the file),
    the usable rows kept. Read like a manifest (``,``, ``;`` or tab separated). A missing column is a PointsError
    (no row can be read). A folder holds QuPath point exports instead, one per image, named after it
    (``<image name>.geojson``: File > Export objects as GeoJSON, points in the image's pixels)."""
    if Path(path).is_dir():
        files = points_folder_files(Path(path))
        if not files:
            raise PointsError(f"{path}: a points folder without .geojson files; put one QuPath export per image in "
                              "it, named after the image (<image name>.geojson)")
        by_name: dict[str, list[Point]] = {}
        source: dict[str, str] = {}  # image name -> the export it was read from
        problems: list[str] = []
        for f in files:
            pts, errs = _parse_geojson_points(f, classes)
            problems += errs
            if pts:  # QuPath names exports after the image, often with its extension: a.tif.geojson is 'a'
                from histowsss.data.io import IMAGE_SUFFIXES
                from histowsss.slides.reader import SLIDE_SUFFIXES

                stem = Path(f.stem)  # (a.ome.tif.geojson is 'a.ome', the manifest's name of a.ome.tif)
                name = stem.stem if stem.suffix.lower() in IMAGE_SUFFIXES + SLIDE_SUFFIXES else f.stem
                if source.setdefault(name, f.name) != f.name:  # (an old export beside a new one: not joined)
                    problems.append(f"{f.name}: image {name!r} has another export here too, {source[name]}; keep "
                                    "one export per image (move the old one away)")
                    continue
                by_name.setdefault(name, []).extend(pts)
        return by_name, problems
    if Path(path).suffix.lower() in (".geojson", ".json"):
        raise PointsError(f"{path}: a GeoJSON export does not say which image it belongs to; put one export per "
                          "image, named <image name>.geojson, in a folder and set points.file to the folder")
    out: dict[str, list[Point]] = {}
    errors: list[str] = []
    lines: list[int] = []
    try:
        cols, rows = read_table(Path(path), lines)
    except ManifestError as e:
        raise PointsError(str(e)) from None
    named = {c.strip().lower(): c for c in cols}  # (QuPath-style headers: Image, X, Class)
    missing = [c for c in ("image", "x", "y", "class") if c not in named]
    if missing:
        raise PointsError(f"{path}: missing column(s) {', '.join(missing)} (the header has: "
                          f"{', '.join(cols) or 'nothing'}); a points file has image (the manifest name), x, y "
                          "(level-0 pixels) and class")
    for i, row in zip(lines, rows):
        row = {c: (row.get(named[c]) or "").strip() for c in ("image", "x", "y", "class")}
        try:
            x, y = float(row["x"]), float(row["y"])
        except ValueError:
            errors.append(f"row {i}: x and y must be numbers, got {row['x']!r}, {row['y']!r}")
            continue
        if not (math.isfinite(x) and math.isfinite(y)):
            errors.append(f"row {i}: x and y must be finite numbers, got {row['x']!r}, {row['y']!r}")
            continue
        try:
            cls = _class_index(row["class"], classes, f"row {i}")
        except PointsError as e:
            errors.append(str(e))
            continue
        out.setdefault(row["image"], []).append(Point(x, y, cls))
    return out, errors


@functools.lru_cache(maxsize=4)
def _read_file(path: str, stamp: object, names: tuple[str, ...]) -> dict[str, tuple[Point, ...]]:
    out, errors = parse_points_file(path, ClassMap(names=list(names)))
    if errors:
        more = (f" (and {len(errors) - 1} more problem(s); `histowsss data check` lists them all)"
                if len(errors) > 1 else "")
        raise PointsError(f"{path}, {errors[0]}{more}")
    return {k: tuple(v) for k, v in out.items()}


def read_points_file(path: Path, classes: ClassMap) -> dict[str, tuple[Point, ...]]:
    """Clicks of ``points.file`` by image name (cached while the file, or the folder's exports, are unchanged)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: points file not found; fix points.file (a CSV with image, x, y, class, or "
                                "a folder of QuPath point exports named <image name>.geojson)")
    # (a folder's own time changes as exports are added, removed or replaced; read once per image of a step, the
    # stamp must stay cheap for thousands of exports)
    stamp = ("folder", path.stat().st_mtime_ns) if path.is_dir() else path.stat().st_mtime_ns
    return _read_file(str(path), stamp, tuple(classes.names))


def uses_points(cfg: RunConfig, where: str) -> bool:
    """True when clicks are configured and act in ``where`` (ir_label, sem_seg, train_seg)."""
    return (cfg.points.file is not None or cfg.data.points_column is not None) and where in cfg.points.use_in


def sample_points(cfg: RunConfig, sample: Sample) -> list[Point]:
    """All clicks of one image (manifest column, then points file)."""
    where = f"{cfg.data.manifest}, row {sample.row} ({sample.name}), column {cfg.data.points_column!r}"
    pts = parse_points(sample.points or "", cfg.data.classes, where if sample.row else f"{sample.name} "
                       f"({cfg.data.points_column})")
    if cfg.points.file is not None:
        pts += list(read_points_file(Path(cfg.points.file), cfg.data.classes).get(sample.name, ()))
    return pts


def point_map(points: list[Point], shape: tuple[int, int], scale: float, radius: float) -> np.ndarray:
    """uint8 (h, w): the class of every labelled pixel, 255 elsewhere, on a grid of ``scale`` pixels per level-0
    pixel (image_scale for working-resolution maps, image_scale / 4 for the stride-4 grid)."""
    h, w = shape
    out = np.full((h, w), IGNORE, np.uint8)
    r = radius * scale
    for p in points:
        cx, cy = p.x * scale, p.y * scale
        x0, x1 = max(0, int(np.floor(cx - r))), min(w, int(np.ceil(cx + r)) + 1)
        y0, y1 = max(0, int(np.floor(cy - r))), min(h, int(np.ceil(cy + r)) + 1)
        if x0 >= x1 or y0 >= y1:
            continue  # outside the image
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disk = ((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r) if r >= 0.5 else np.zeros(xx.shape, bool)
        disk |= (xx == min(w - 1, int(cx))) & (yy == min(h - 1, int(cy)))  # the click's own pixel / cell
        out[y0:y1, x0:x1][disk] = p.cls
    return out


def apply_points(labels: np.ndarray, pmap: np.ndarray) -> np.ndarray:
    """``labels`` with every clicked pixel set to its click's class."""
    return np.where(pmap != IGNORE, pmap, labels).astype(labels.dtype)


def check_points(points: list[Point], size_wh: tuple[int, int], where: str) -> list[str]:
    """Problems with one image's clicks (outside the image), for ``histowsss data check``."""
    w, h = size_wh
    return [f"{where}: click ({p.x:g}, {p.y:g}) lies outside the {w}x{h} image" for p in points
            if not (0 <= p.x < w and 0 <= p.y < h)]


CLICK_STEPS = {"ir_label": "cam_to_ir_label", "sem_seg": "make_sem_seg_labels", "train_seg": "train_seg"}


def clicks_report(cfg: RunConfig) -> list[str]:
    """What the steps will make of the clicks, read before any step runs: a line with their number per class, and
    a warning for every kind of click they will leave out (outside its image, on an image of no training split,
    named for an image the manifest lacks) or that contradicts its image's labels. A click that cannot be parsed
    raises PointsError naming it, before hours of CAM training."""
    from histowsss.data.io import image_size
    from histowsss.data.manifest import read_manifest

    samples = read_manifest(cfg.data)
    trainval = cfg.data.train_splits + cfg.data.val_splits  # (the splits of the IRN steps and of train_seg)
    used = set(cfg.ir_label.splits or trainval) | set(cfg.train_seg.splits or trainval)
    names = cfg.data.classes.names
    bg = cfg.data.classes.background
    per_class = [0] * len(names)
    outside, untrained, contradict = [], [], []
    n_images = 0
    for smp in samples:
        pts = sample_points(cfg, smp)
        if not pts:
            continue
        if smp.split not in used:
            untrained.append(f"{smp.name} ({smp.split})")
            continue
        n_images += 1
        h, w = image_size(smp.image)
        for p in pts:
            if not (0 <= p.x < w and 0 <= p.y < h):
                outside.append(f"{smp.name} ({p.x:g}, {p.y:g})")
                continue
            per_class[p.cls] += 1
            if cfg.data.has_labels and names[p.cls] != bg and names[p.cls] not in smp.labels:
                contradict.append(f"{smp.name} ({p.x:g}, {p.y:g}) {names[p.cls]} (labels: "
                                  f"{', '.join(smp.labels) or 'none'})")
    lines = [f"clicks: {sum(per_class)} on {n_images} image(s) of the training splits ("
             + ", ".join(f"{k} {n}" for n, k in zip(names, per_class) if k) + ")"]

    def warn(items: list[str], what: str) -> None:
        if items:
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            lines.append(f"warning: {len(items)} {what}: {'; '.join(items[:5])}{more}")

    warn(outside, "click(s) outside their image, left out (x = column, y = row, level-0 pixels)")
    warn(untrained, "image(s) with clicks in no split the click steps train on (ir_label.splits, train_seg.splits), "
                    "left out")
    warn(contradict, "click(s) of a class their image is not labelled with: used as given (a wrong click or a "
                     "wrong label?)")
    stray: list[str] = []
    if cfg.points.file is not None:
        known = {smp.name for smp in samples}
        stray = sorted(set(read_points_file(Path(cfg.points.file), cfg.data.classes)) - known)
    if not sum(per_class) and not (outside or untrained or stray):
        lines.append("warning: no click on any image (an empty points file or column?): the steps that use clicks "
                     "run as without them")
    if stray:
        warn(stray, f"image name(s) in {cfg.points.file} that the manifest lacks, left out "
                    f"({names_rule(cfg.points.file)})")
    return lines
