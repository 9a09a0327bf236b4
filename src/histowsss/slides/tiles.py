"""Cut whole-slide images into a tile folder with a manifest, so slide-level labels train the whole pipeline.

Input: a slide manifest (CSV; ``image`` = slide path relative to the CSV's folder, ``split``, ``patient``, label
column(s), any other columns). Output, in ``out_dir``: ``tiles/<slide stem>/<stem>_x<X>_y<Y>.png`` (X, Y: the
tile's top-left corner in level-0 slide pixels) and ``manifest.csv`` with one row per tile: the slide's row with
``image`` replaced by the tile, plus ``slide``, ``x``, ``y``, ``tissue`` (the tile's tissue fraction). Every tile
inherits its slide's labels (multiple-instance style: a tile of a malignant slide is "possibly malignant"), so
``data.patches`` is not needed; a patient-grouped split stays patient-grouped. Tiles are taken at the resolution
asked (``mpp``, or ``downsample`` level-0 pixels per tile pixel), only where the tissue mask covers more than
``min_tissue`` of the tile; ``max_tiles`` keeps a seeded random subset per slide. Tiles already on disk are
reused, so an interrupted run continues; the manifest is written last, atomically. A ``points`` column (clicks
``"x y class; ..."`` in level-0 slide pixels, QuPath's frame) becomes, per tile, the clicks inside it in tile
pixels. ``split`` and ``patient`` must be filled for every slide.

With an ``annotations`` column (a QuPath GeoJSON export per slide, relative to the CSV) and ``mask_classes``, each
tile also gets a class mask rasterised from the annotations (:mod:`histowsss.slides.annotations`), so tiles of
annotated slides can be evaluated like GlaS (``data.mask_mode: class_ids`` with the classes in that order).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from pathlib import Path
from typing import Callable

from histowsss.data.io import image_stem
from histowsss.data.manifest import read_csv_rows


class SlideManifestError(ValueError):
    """The slide manifest cannot be used; the message names the file, the row and the fix."""


def read_slide_manifest(path: Path, lines: list[int] | None = None) -> list[dict[str, str]]:
    """Rows of a slide manifest (stripped strings), checked for the columns tiling needs; ``lines`` receives each
    row's line in the file (for messages)."""
    columns, rows = read_csv_rows(path, "slide manifest", "pass the path of a CSV with columns image, split, "
                                  "patient and the label column(s)", lines=lines)
    missing = [c for c in ("image", "split", "patient") if c not in columns]
    if missing:
        raise SlideManifestError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(columns)}); a "
                                 "slide manifest needs image (slide path), split and patient, plus the label column")
    clash = [c for c in ("slide", "x", "y", "tissue") if c in columns]
    if clash:
        raise SlideManifestError(f"{path}: column(s) {', '.join(clash)} are written by tiling; rename them")
    if not rows:
        raise SlideManifestError(f"{path}: no slides listed")
    return rows


def slide_clicks(cell: str, where: str) -> list[tuple[float, float, str]]:
    """The clicks of a slide manifest's ``points`` cell (``"x y class; ..."``, level-0 slide pixels in QuPath's
    frame, as docs/points.md writes them for images); a click that is no ``x y class`` raises SlideManifestError
    naming ``where`` (classes are checked by ``data check`` on the tiles)."""
    from histowsss.data.points import PointsError, click_fields

    out = []
    for k, part in enumerate(p.strip() for p in (cell or "").split(";")):
        if not part:
            continue
        try:
            out.append(click_fields(part, k, where))  # (the parser of the images' points cells)
        except PointsError:
            raise SlideManifestError(f"{where}: click {k + 1} {part!r} must be 'x y class' with x, y numbers "
                                     "(level-0 slide pixels)") from None
    return out


def tile_clicks(clicks: list[tuple[float, float, str]], box: tuple[float, float, float, float], tile: int,
                origin: tuple[int, int] = (0, 0)) -> str:
    """The clicks inside a tile (level-0 ``box`` = x, y, w, h; clicks in QuPath's frame, which starts at
    ``origin``), in the tile's pixels, as a points cell; '' when none falls in it."""
    x0, y0, w0, h0 = box
    out = []
    for x, y, cls in clicks:
        tx, ty = (x + origin[0] - x0) * tile / w0, (y + origin[1] - y0) * tile / h0
        if 0 <= tx < tile and 0 <= ty < tile:
            out.append(f"{tx:.1f} {ty:.1f} {cls}")
    return "; ".join(out)


def tissue_cells(slide, downsample: float, tile: int, stride: int, min_tissue: float,
                 tissue_threshold: float | None) -> list[tuple[int, int, float]]:
    """(x, y, tissue fraction) of every ``tile``-pixel cell (``stride`` apart, working pixels at ``downsample``)
    whose tissue fraction on the slide's thumbnail mask is above ``min_tissue``."""
    from histowsss.slides.grid import Tile, tissue_fraction, working_size
    from histowsss.slides.tissue import tissue_mask

    thumb, thumb_ds = slide.thumbnail(2048)
    tissue = tissue_mask(thumb, threshold=tissue_threshold)
    ww, wh = working_size(slide.dimensions, downsample)
    cells = []
    for y in range(0, max(1, wh - tile + 1), stride):
        for x in range(0, max(1, ww - tile + 1), stride):
            f = tissue_fraction(Tile(x, y, tile), downsample, tissue, thumb_ds)
            if f > min_tissue:
                cells.append((x, y, f))
    return cells


def extract_tiles(manifest: Path, out_dir: Path, tile: int = 224, stride: int | None = None,
                  mpp: float | None = None, downsample: float | None = None, min_tissue: float = 0.5,
                  max_tiles: int | None = None, seed: int = 0, tissue_threshold: float | None = None,
                  backend: str = "auto", overwrite: bool = False, mask_classes: list[str] | None = None,
                  default_class: str | None = None, ignore_unknown: bool = False, no_crop: bool = False,
                  log: Callable[[str], None] = print) -> Path:
    """Write tiles of every slide of ``manifest`` and ``out_dir/manifest.csv``; returns the manifest path.

    With an ``annotations`` column (QuPath GeoJSON per slide) and ``mask_classes``, every tile also gets a class
    mask (``masks/<slide>/<tile>.png``, pixel = index in ``mask_classes``) and the manifest a ``mask`` column.
    Annotation coordinates are QuPath's: for a slide QuPath crops to its bounds they start at
    ``Slide.qupath_origin`` (``no_crop``: annotations of an image QuPath opened with --no-crop, level-0 frame).
    """
    from rich.progress import track

    from histowsss.data.manifest import write_manifest
    from histowsss.engine.atomic import write_png
    from histowsss.slides.grid import working_downsample
    from histowsss.slides.reader import open_slide

    out_manifest = out_dir / "manifest.csv"
    if out_manifest.exists() and not overwrite:
        raise FileExistsError(f"{out_manifest} already exists; pass --overwrite to tile again, or choose another "
                              "--out folder")
    if (mpp is None) == (downsample is None):
        raise ValueError("give exactly one of --mpp (microns per tile pixel) or --downsample (level-0 pixels per "
                         "tile pixel)")
    stride = stride or tile
    if tile < 8 or stride < 1:
        raise ValueError(f"tile ({tile}) must be >= 8 and stride ({stride}) >= 1")
    for what, v in (("--mpp", mpp), ("--downsample", downsample)):
        if v is not None and not v > 0:  # checked before anything of an earlier call is touched
            raise ValueError(f"{what} must be positive, got {v}")
    lines: list[int] = []
    rows = read_slide_manifest(manifest, lines)
    root = manifest.parent
    annotated = "annotations" in rows[0]
    if annotated and not mask_classes:
        raise ValueError(f"{manifest}: has an annotations column; pass --mask-classes (e.g. background,gland: the "
                         "class of mask value 0, 1, ...) to turn the annotations into tile masks")
    if mask_classes and not annotated:
        raise ValueError(f"{manifest}: --mask-classes needs an 'annotations' column (a QuPath GeoJSON export per slide)")
    if annotated and "mask" in rows[0]:
        raise SlideManifestError(f"{manifest}: has both 'mask' and 'annotations'; tile masks are written from the "
                                 "annotations into the 'mask' column: rename or drop 'mask'")
    problems = [f"row {i}: {root / r['image']} not found" for i, r in zip(lines, rows)
                if not (root / r["image"]).exists()]
    empty = [f"row {i}: empty {col}" for i, r in zip(lines, rows) for col in ("split", "patient") if not r[col]]
    if empty:  # a tile manifest without them would leave each tile its own patient: tiles of a slide in two splits
        raise SlideManifestError(f"{manifest}: " + "; ".join(empty[:10]) + (" ..." if len(empty) > 10 else "")
                                 + "; fill them in (patient: the slide's patient id, or the slide's name where it is "
                                 "unknown; split: `histowsss data split` the slide manifest first)")
    clicks = {r["image"]: slide_clicks(r.get("points", ""), f"{manifest}: row {i} (points)")
              for i, r in zip(lines, rows) if r.get("points")}
    stems: dict[str, int] = {}
    for i, r in zip(lines, rows):
        stem = image_stem(r["image"])
        if stem in stems:
            problems.append(f"rows {stems[stem]} and {i}: two slides named {stem!r} would share tiles/{stem}/ "
                            "(rename one)")
        stems.setdefault(stem, i)
    if problems:
        raise FileNotFoundError(f"{manifest}: " + "; ".join(problems[:10]) + " (paths are relative to the manifest's "
                                "folder; fix them or remove the rows)")
    # everything a slide needs is checked before any tile is written or the record replaced: its resolution, and its
    # annotation file (readable, every class known), so a bad row stops the call up front, not after hours of tiling
    from histowsss.slides.annotations import read_annotations

    origins, annotation_sha = {}, {}
    for i, r in zip(lines, rows):
        with open_slide(root / r["image"], backend) as slide:
            if downsample is None and slide.mpp is None:
                raise ValueError(f"{root / r['image']} (row {i}): the slide's metadata has no microns-per-pixel "
                                 "value, so --mpp cannot be met; pass --downsample (level-0 pixels per tile pixel) "
                                 "instead")
            if annotated and r["annotations"] and not no_crop and slide.qupath_origin != (0, 0):
                origins[r["image"]] = list(slide.qupath_origin)  # masks depend on the frame annotations are read in
            frame = slide.dimensions if no_crop else slide.qupath_frame[2:]  # (annotations are in this frame)
        if annotated and r["annotations"]:
            ann_path = root / r["annotations"]  # read to check it, and read again when its slide is tiled (memory)
            checked = read_annotations(ann_path, list(mask_classes or []), default_class, ignore_unknown)
            for note in checked.notes(*frame):  # what the masks will not show, said before any tile is cut
                log(f"warning: {ann_path} (row {i}): {note}")
            annotation_sha[r["image"]] = hashlib.sha256(ann_path.read_bytes()).hexdigest()[:16]
    # tiles of an interrupted call are reused only when they were cut with the same settings (names carry only the
    # tile's corner, which other tile sizes / resolutions share); a slide's masks only from the same annotations
    from histowsss.engine.atomic import write_json

    settings = {"tile": tile, "mpp": mpp, "downsample": downsample, "mask_classes": list(mask_classes or []),
                "default_class": default_class, "ignore_unknown": ignore_unknown,
                **({"no_crop": True} if no_crop else {}), **({"qupath_origins": origins} if origins else {})}
    record = out_dir / "tiling.json"
    earlier = json.loads(record.read_text()) if record.exists() else None
    earlier_sha = (earlier or {}).pop("annotation_sha", {})
    rewrite = overwrite or earlier != settings
    import shutil

    if earlier is not None and earlier != settings:
        # removed before the new settings are recorded: a second interrupted call must not find them under those
        log(f"{out_dir}: tiles of an earlier call with other settings ({earlier}) are removed and written anew")
        for sub in ("tiles", "masks"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    elif earlier is not None:
        for image, sha in annotation_sha.items():
            if earlier_sha.get(image) != sha:  # the annotations were edited since: that slide's masks are redone
                if (out_dir / "masks" / image_stem(image)).exists():
                    log(f"{image}: its annotations changed (or were not recorded) since the earlier call; its masks "
                        "are written anew")
                shutil.rmtree(out_dir / "masks" / image_stem(image), ignore_errors=True)
    write_json(record, {**settings, **({"annotation_sha": annotation_sha} if annotation_sha else {})})
    out_rows: list[dict[str, str]] = []
    for i, r in zip(lines, rows):
        path = root / r["image"]
        ann = (read_annotations(root / r["annotations"], list(mask_classes or []), default_class, ignore_unknown)
               if annotated and r["annotations"] else None)
        with open_slide(path, backend) as slide:
            ox, oy = (0, 0) if no_crop else slide.qupath_origin  # annotations are in QuPath's (cropped) frame
            ds = working_downsample(path, slide.mpp, mpp, 1.0, downsample)
            cells = tissue_cells(slide, ds, tile, stride, min_tissue, tissue_threshold)
            if max_tiles is not None and len(cells) > max_tiles:
                cells = sorted(random.Random(f"{seed}/{path.name}").sample(cells, max_tiles), key=lambda c: (c[1], c[0]))
            sub = out_dir / "tiles" / image_stem(path)
            placed = 0  # clicks that landed in a tile (with stride < tile, in each tile over them)
            # (a transient bar in a log, stdout not a terminal, leaves only a blank line)
            for x, y, f in track(cells, description=f"{path.name}: tiles", transient=True,
                                 disable=not sys.stdout.isatty()):
                x0, y0 = int(round(x * ds)), int(round(y * ds))
                name = f"{image_stem(path)}_x{x0}_y{y0}.png"
                dest = sub / name
                box = (x * ds, y * ds, tile * ds, tile * ds)
                if not dest.exists() or rewrite:
                    write_png(dest, slide.read(*box, (tile, tile)))
                row = {**r, "image": str(dest.relative_to(out_dir)), "slide": r["image"], "x": str(x0),
                       "y": str(y0), "tissue": f"{f:.3f}"}
                if "points" in r:  # the slide's clicks that fall in this tile, in its pixels
                    row["points"] = tile_clicks(clicks.get(r["image"], []), box, tile, (ox, oy))
                    placed += len([c for c in row["points"].split(";") if c.strip()])
                if annotated:
                    row["mask"] = ""
                    if ann is not None:
                        mdest = out_dir / "masks" / image_stem(path) / name
                        if not mdest.exists() or rewrite:
                            write_png(mdest, ann.rasterize(box[0] - ox, box[1] - oy, box[2], box[3], (tile, tile)))
                        row["mask"] = str(mdest.relative_to(out_dir))
                out_rows.append(row)
        n_clicks = len(clicks.get(r["image"], []))
        if n_clicks and not placed:
            log(f"warning: {path.name}: none of its {n_clicks} click(s) falls in a tile (tiles are cut where there "
                "is tissue; clicks in level-0 slide pixels, QuPath's frame)")
        log(f"{path.name}: {len(cells)} tile(s) of {tile} px at downsample {ds:.3f}"
            + (f" (warning: no {tile}-px cell holds more than {min_tissue:.0%} tissue: the slide gives no training "
               "or test image; lower --min-tissue, --tile or --tissue-threshold)" if not cells else ""))
    lost = sorted({r["split"] for r in rows} - {r["split"] for r in out_rows})
    if out_rows and lost:
        log(f"warning: split(s) {', '.join(lost)} got no tile (their slides hold no cell with more than "
            f"{min_tissue:.0%} tissue)")
    if not out_rows:
        raise ValueError(f"{manifest}: no tile holds more than {min_tissue:.0%} tissue; lower --min-tissue or "
                         "--tissue-threshold, or check the slides")
    from histowsss.data.manifest import rebase_paths

    # the slide and annotation paths were relative to the slides CSV: make them name the same files from out_dir
    rebase_paths(out_rows, root, out_dir, columns=("slide", "annotations"))
    write_manifest(out_manifest, out_rows)
    gone = _remove_unlisted_tiles(out_dir, out_rows) if earlier is not None else 0  # (only after a call of ours)
    if gone:
        log(f"{out_dir}: {gone} tile / mask file(s) of an earlier call that the new manifest does not list were "
            "removed (a folder of tiles holds what its manifest lists)")
    return out_manifest


TILE_NAME = re.compile(r".+_x\d+_y\d+\.png")


def _remove_unlisted_tiles(out_dir: Path, out_rows: list[dict[str, str]]) -> int:
    """Remove the tile and mask PNGs (``<slide>_x<X>_y<Y>.png`` in ``tiles/<slide>/``, ``masks/<slide>/``) that
    ``out_rows`` does not list (an earlier call's, with more tiles or other slides), and folders left empty;
    return how many files went. Other files are left alone."""
    listed = {(out_dir / r[c]).resolve() for r in out_rows for c in ("image", "mask") if r.get(c)}
    gone = 0
    for sub in ("tiles", "masks"):
        for folder in sorted(p for p in (out_dir / sub).glob("*") if p.is_dir()):
            for f in folder.iterdir():
                if f.is_file() and TILE_NAME.fullmatch(f.name) and f.resolve() not in listed:
                    f.unlink()
                    gone += 1
            if not any(folder.iterdir()):
                folder.rmdir()
    return gone
