"""Open every image and mask before a long run and list every problem."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histowsss.config import DataConfig, data_split_leaks
from histowsss.data.io import (ImageReadError, file_orientation, image_size, lossy_compression, read_mask,
                               read_rgb)
from histowsss.data.manifest import ManifestError, patient_spellings, scan_manifest
from histowsss.data.masks import BINARY_MODES, class_map_from_mask, read_class_ids
from histowsss.data.stats import patient_split_overlap


@dataclass
class Problem:
    """One problem found in the dataset."""

    level: str  # "error" or "warning"
    file: str
    message: str


def _message(e: BaseException, file: str) -> str:
    """The error text without a leading repetition of the file name (the Problem names the file)."""
    msg = str(e)
    for prefix in (f"{file}: ", f"{file} "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def _labels_from_masks(cfg: DataConfig) -> bool:
    """Whether training labels are read from the masks (no label column, or patch labels by mask fraction)."""
    return not cfg.has_labels or (cfg.patches is not None and cfg.patches.label_rule == "mask_fraction")


def class_coverage(cfg: DataConfig, samples: list, manifest: str, level: str = "error") -> list[Problem]:
    """A problem per class (background aside) that no image of the training splits is labelled with: the CAM
    classifier would see it only as a negative and could never localise it."""
    if _labels_from_masks(cfg):  # (no label column included)
        return []
    train = [s for s in samples if s.split in cfg.train_splits]
    if not train:
        return []
    seen = {lab for s in train for lab in s.labels}
    if level == "warning":  # classes read off the labels: only those some image carries (not a placeholder)
        seen |= set(cfg.classes.names) - {lab for s in samples for lab in s.labels}
    return [Problem(level, manifest, f"class {c!r} has no image in the training splits "
                    f"({', '.join(cfg.train_splits)}): it cannot be learnt; label some training images {c!r} "
                    "(e.g. re-split with `histowsss data split`) or remove it from data.classes.names")
            for c in cfg.classes.names if c != cfg.classes.background and c not in seen]


def _points_file_problems(points_file, cfg: DataConfig, samples: list) -> tuple[list[Problem], dict]:
    """Problems of ``points.file`` (unreadable, unknown class, names not in the manifest) and its clicks by name."""
    from pathlib import Path

    from histowsss.data.points import PointsError, names_rule, parse_points_file

    path = str(points_file)
    if not Path(points_file).exists():
        return [Problem("error", path, "points file not found; fix points.file (a CSV with image, x, y, class, or a "
                        "folder of QuPath point exports named <image name>.geojson)")], {}
    try:
        clicks, errors = parse_points_file(points_file, cfg.classes)  # every bad row, the good ones kept
    except (PointsError, OSError, UnicodeDecodeError) as e:
        return [Problem("error", path, _message(e, path))], {}
    problems = [Problem("error", path, msg) for msg in errors]
    names = {s.name for s in samples}
    unknown = sorted(set(clicks) - names)
    if unknown:
        more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
        problems.append(Problem("warning", path, f"clicks for {len(unknown)} image(s) not in the manifest, e.g. "
                                f"{', '.join(map(repr, unknown[:3]))}{more}: they are not used; "
                                f"{names_rule(points_file)}"))
    return problems, clicks


def _instance_mask_problem(s, cfg: DataConfig, hw: tuple[int, int]) -> Problem | None:
    """The instance mask (``mask_cc`` column) of ``s``: readable and the size of its image, or a Problem."""
    from histowsss.data.manifest import data_root, manifest_path
    from histowsss.data.masks import INSTANCE_COLUMN

    rel = (s.extra.get(INSTANCE_COLUMN) or "").strip()
    if not rel:
        return None
    path = manifest_path(data_root(cfg), rel)
    try:
        read_mask(path, expected_hw=hw)
    except ImageReadError as e:
        return Problem("error", str(path), f"{_message(e, str(path))} (instance mask of {s.image})")
    except Exception as e:
        return Problem("error", str(path), f"cannot be read ({type(e).__name__}: {e}) (instance mask of {s.image})")
    lossy = lossy_compression(path)
    if lossy:  # instance ids changed along every outline: objects split and merged
        return Problem("warning", str(path), f"{lossy} instance mask: its lossy compression changes the ids near every "
                       f"outline (objects split and merged); {_LOSSLESS} (instance mask of {s.image})")
    return None


def _mask_column_problems(cfg: DataConfig, manifest: str) -> list[Problem]:
    """A ``data.mask_column`` set by hand that the manifest lacks: no image would have a mask (an error where the
    labels are read from masks)."""
    from histowsss.data.manifest import read_table

    default = DataConfig.model_fields["mask_column"].default
    if not cfg.mask_column or cfg.mask_column == default and not _labels_from_masks(cfg):
        return []  # (no 'mask' column: a dataset without masks)
    columns = read_table(cfg.manifest)[0]
    if cfg.mask_column in columns:
        return []
    needed = _labels_from_masks(cfg)
    return [Problem("error" if needed else "warning", manifest,
                    f"data.mask_column {cfg.mask_column!r} is not a column of the manifest (the header has: "
                    f"{', '.join(columns)}): no image has a mask, so "
                    + ("no training label can be read" if needed
                       else "nothing can be scored and no supervised upper bound trained")
                    + "; set data.mask_column to the masks' column" + ("" if needed else " (or null: no masks)"))]


def _tiling_classes_problems(cfg: DataConfig, manifest: str) -> list[Problem]:
    """Tiles cut by ``histowsss data tiles --mask-classes`` whose mask classes are not the config's classes in that
    order: every mask would be read wrongly (one warning here, not one error per tile)."""
    from histowsss.data.manifest_facts import tiling_mask_classes

    cut = tiling_mask_classes(Path(cfg.manifest))
    if not cut or not cfg.mask_column or cfg.mask_values or cfg.mask_colors or cut == list(cfg.classes.names):
        return []
    values = ", ".join(f"{k} = {c}" for k, c in enumerate(cut))
    if cfg.mask_mode == "class_ids":
        read = "mask value k is read as the k-th of data.classes.names"
        fix = (f"set data.classes.names to {', '.join(cut)} (mask order) when the labels use those classes, or map "
               "the values onto the label classes with data.mask_values (CLASS: VALUE, ignore: VALUE)")
    else:
        read = f"data.mask_mode={cfg.mask_mode} takes every value over 0 ({', '.join(cut[1:])}) as foreground"
        fix = "map the values onto the label classes with data.mask_values (and mask_mode class_ids), if that is wrong"
    return [Problem("warning", manifest, f"the tiles' masks were cut with --mask-classes {', '.join(cut)} "
                    f"(tiling.json: mask values {values}), but data.classes.names are "
                    f"{', '.join(cfg.classes.names)}: {read}; {fix}")]


# a binary-mode "mask" of more distinct values than this, with fewer of its pixels at 0 than this fraction, is no mask
# (a photo or the image itself: mask > 0 makes it all foreground): an error, not a warning
NOT_A_MASK_VALUES = 64
NOT_A_MASK_ZEROS = 0.01
_LOSSLESS = "save masks losslessly as PNG"


def _listed(values: np.ndarray) -> str:
    v = values.tolist()
    return ", ".join(map(str, v)) if len(v) <= 6 else f"{v[0]}, {v[1]}, {v[2]}, ..., {v[-2]}, {v[-1]}"


def mask_value_problems(mask, raw: np.ndarray | None, cfg: DataConfig, image: str) -> list[Problem]:
    """Problems of a mask whose labels are changed or merged without an error: a lossily compressed (JPEG) file, in
    any mode; in a binary mode (mask > 0 is foreground) more than two values, or two and neither 0, a warning (an
    error when it has many values and almost no 0: an image, not a mask). ``raw``: its values as read (None:
    unreadable, only the file type is checked)."""
    file = str(mask)
    lossy = lossy_compression(mask)
    jpeg = f"it is a {lossy} file, whose lossy compression changes the values near every edge" if lossy else ""
    if raw is not None and cfg.mask_mode in BINARY_MODES and not cfg.mask_colors and not cfg.mask_values:
        vals = raw[~np.isin(raw, cfg.mask_ignore_values)] if cfg.mask_ignore_values else raw.ravel()
        if vals.dtype == np.uint8:
            counts = np.bincount(vals, minlength=256)
            values = np.flatnonzero(counts)
            counts = counts[values]
        else:
            values, counts = np.unique(vals, return_counts=True)
        n, total = len(values), max(int(counts.sum()), 1)
        zeros = float(counts[values == 0].sum()) / total
        fg = 100 * float(counts[values > 0].sum()) / total
        rule = f"data.mask_mode={cfg.mask_mode} takes mask > 0 as foreground"
        if n > NOT_A_MASK_VALUES and zeros < NOT_A_MASK_ZEROS:
            return [Problem("error", file, f"not a mask, it seems: {n} distinct values ({_listed(values)}) and "
                            f"{100 * zeros:.1f}% of its pixels at 0; {rule}, which makes {fg:.1f}% of it "
                            f"foreground. Is it an image rather than its mask? Point the {cfg.mask_column or 'mask'} "
                            f"column at the mask, and {_LOSSLESS} with 0 / 1 or 0 / 255 (image: {image})")]
        if n > 2:
            return [Problem("warning", file, f"binary mask with {n} distinct values ({_listed(values)}), not 2: "
                            f"{rule}, so every value over 0 is foreground ({fg:.1f}% of its pixels)"
                            + (f"; {jpeg}" if jpeg else "") + f"; {_LOSSLESS} with 0 / 1 or 0 / 255 (values that "
                            f"are class ids: set data.mask_mode to class_ids) (image: {image})")]
        if n == 2 and values[0] > 0:
            return [Problem("warning", file, f"binary mask whose two values {values[0]} and {values[1]} are both over "
                            f"0: {rule}, so all of it is foreground" + (f"; {jpeg}" if jpeg else "")
                            + f"; {_LOSSLESS} with 0 for background and 1 or 255 for foreground (image: {image})")]
    if lossy:
        return [Problem("warning", file, f"{lossy} mask: {jpeg} (and so the labels: new values, or other classes, "
                        f"along every boundary); {_LOSSLESS} (binary masks with 0 / 1 or 0 / 255) (image: {image})")]
    return []


def orientation_problem(image, mask) -> str | None:
    """An image whose EXIF orientation tag turns it on reading (as viewers show it) while its mask has no such tag
    (or another one): the two are read turned against each other whenever the mask was made from the stored pixels
    (most scripts and exporters), and a square image or a half turn keeps the sizes equal, so nothing else notices."""
    turn, mask_turn = file_orientation(image), file_orientation(mask)
    if turn in (0, 1) or turn == mask_turn:
        return None
    return (f"the image carries EXIF orientation {turn} (it is read turned, as viewers show it) and its mask "
            f"{'does not' if mask_turn in (0, 1) else f'carries {mask_turn}'} ({mask}): if the mask was made from the "
            "stored pixels, image and mask are read turned against each other. Save the image with its pixels "
            "turned and no tag (e.g. `exiftran -ai IMAGE`, or Pillow's ImageOps.exif_transpose), or remove the tag "
            "(`exiftool -Orientation= IMAGE`), whichever matches how the mask was drawn")


def _open_image(path) -> tuple[tuple[int, int] | None, list[Problem]]:
    """((height, width) or None when unreadable, the problems found: an error, or the reader's warnings)."""
    image = str(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            img = read_rgb(path)
    except ImageReadError as e:
        return None, [Problem("error", image, _message(e, image))]
    except Exception as e:  # anything unexpected is still reported per file, and the check goes on
        return None, [Problem("error", image, f"cannot be read ({type(e).__name__}: {e})")]
    return img.shape[:2], [Problem("warning", image, _message(w.message, image))  # type: ignore[arg-type]
                           for w in caught if issubclass(w.category, UserWarning)]


def _file_problems(image, mask, cfg: DataConfig) -> list[Problem]:
    """The image (and mask) of a manifest row left out for a row problem: readable, RGB, the mask its size."""
    if not image.exists():
        return []  # (named by the row problem already)
    hw, out = _open_image(image)
    if hw is None:
        return out
    h, w = hw
    if mask is not None and mask.exists():
        raw = None
        try:
            raw = read_class_ids(mask, cfg, expected_hw=(h, w))
        except Exception as e:
            msg = _message(e, str(mask)) if isinstance(e, ImageReadError) else f"cannot be read ({type(e).__name__}: {e})"
            out.append(Problem("error", str(mask), f"{msg} (image: {image})"))
        out += mask_value_problems(mask, raw, cfg, str(image))
    return out


def check_dataset(cfg: DataConfig, min_size: int | None = None, progress: bool = True,
                  train_min_size: int | None = None, train_mirrors: bool = False,
                  points_file=None, classes_inferred: bool = False, gate_tiles: bool = True) -> list[Problem]:
    """Return every problem found (errors and warnings); an empty list means the data is usable.

    Every manifest row problem, every unreadable/grayscale/too-small image, every unreadable or wrongly sized
    mask (instance masks too), every patient found in several splits, every class without a training image, and
    every training image without the mask its labels are read from is listed (nothing stops at the first problem;
    the files of rows left out for a row problem are opened too); a split no ``data.*_splits`` names, a
    ``data.mask_column`` the manifest lacks, class-id masks that look binary (0/255), masks of a binary mode that
    hold more than two values and JPEG masks are warned about (:func:`mask_value_problems`).
    ``min_size`` (scaled pixels, every image) defaults to the patch size when ``cfg.patches`` tiles without padding,
    for the images that are tiled: the training splits (train_cam's patches) and, with ``gate_tiles``
    (``eval_cam.label_gating: patch`` or ``train_seg.patch_veto``; unknown without a config, so assumed), the
    other non-test images with a mask;
    ``train_min_size`` applies to the training splits only (train_cam's crop, which they must hold); with
    ``train_mirrors`` (``train_cam.small_images=mirror``) a training image under it is a warning (it will be
    mirrored out to the crop), not an error. ``points_file`` (``points.file``) is read and its clicks checked too.
    ``classes_inferred``: the classes were read off the label column (no config says which is background), so a
    class without training images is a warning (it may be the background class), not an error.
    """
    manifest = str(cfg.manifest)
    rejected: list[dict] = []  # rows left out for a problem: their files are opened too
    try:
        samples, row_problems = scan_manifest(cfg, check_files=True, rejected=rejected)
    except ManifestError as e:  # no manifest, or required columns missing: nothing else can be checked
        return [Problem("error", manifest, _message(e, manifest))]
    problems = [Problem("error", manifest, p) for p in row_problems]
    if rejected and not samples and all(not Path(r["image"]).exists() for r in rejected):
        from histowsss.data.manifest import data_root

        problems.append(Problem("error", manifest, f"none of the manifest's {len(rejected)} image(s) is found: "
                                f"relative paths are read from {data_root(cfg)} ("
                                + ("data.root" if cfg.root is not None else "the manifest's folder") + "); "
                                "set data.root to the folder they are relative to, or write them relative to the "
                                "manifest (or absolute)"))
    if not samples and not row_problems:
        problems.append(Problem("warning", manifest, "the manifest has no rows"))
    problems += _mask_column_problems(cfg, manifest)
    problems += _tiling_classes_problems(cfg, manifest)
    present = sorted({s.split for s in samples} | {r["split"] for r in rejected if r["split"]})
    named = set(cfg.train_splits) | set(cfg.val_splits) | set(cfg.test_splits)
    for split in present:
        if split not in named:
            n = sum(s.split == split for s in samples) + sum(r["split"] == split for r in rejected)
            problems.append(Problem("warning", manifest, f"split {split!r} ({n} image(s)) is in none of data."
                                    f"train_splits / val_splits / test_splits ({', '.join(sorted(named))}): no step "
                                    "uses those images; fix the split column (spelling, case) or add the split"))
    for key, wanted in (("train_splits", cfg.train_splits), ("val_splits", cfg.val_splits),
                        ("test_splits", cfg.test_splits)):
        for split in wanted:
            if samples and split not in present:
                problems.append(Problem("warning", manifest,
                                        f"data.{key} names split {split!r} but no image is in it (the manifest has: "
                                        f"{', '.join(present)}); set data.{key} or fix the split column"))
    problems += [Problem("error", manifest, m) for m in data_split_leaks(cfg)]
    problems += class_coverage(cfg, samples, manifest, "warning" if classes_inferred else "error")
    file_clicks: dict = {}
    if points_file is not None:
        found, file_clicks = _points_file_problems(points_file, cfg, samples)
        problems += found
    from_masks = _labels_from_masks(cfg)
    asked_size = min_size  # given by the caller (--min-size), not the patch size below
    patch_size = cfg.patches.size if min_size is None and cfg.patches is not None and cfg.patches.border != "pad" \
        else None  # only images that are tiled into patches must hold one
    binary_like: list[str] = []  # class_ids masks holding only 0 and 255 (255 = ignore): binary masks?
    disagree: list[str] = []  # class_ids masks whose classes are not the row's labels: classes in another order?
    masked_rows = 0
    it = samples
    if progress:
        from rich.progress import track

        it = track(samples, description="checking images", transient=True, disable=not sys.stdout.isatty())
    for s in it:
        image = str(s.image)
        hw, found = _open_image(s.image)
        problems += found
        if hw is None:
            continue
        h, w = hw
        hs, ws = round(h * cfg.image_scale), round(w * cfg.image_scale)
        train_least = (train_min_size or 0) if s.split in cfg.train_splits else 0
        # train_cam tiles the training images; the patch gate tiles the other labelled ones that have a mask
        tiled = (patch_size or 0) if s.split in cfg.train_splits or (
            gate_tiles and s.mask is not None and s.split not in cfg.test_splits) else 0
        least = max(min_size or 0, tiled, 0 if train_mirrors else train_least)
        if train_mirrors and train_least > least and min(hs, ws) < train_least:
            problems.append(Problem(
                "warning", image, f"image {ws}x{hs} (after image_scale {cfg.image_scale}) is smaller than "
                f"train_cam's crop {train_least}: train_cam will mirror it out to the crop (train_cam.small_images)"))
        if least and min(hs, ws) < least:
            if asked_size is not None and least == asked_size > (0 if train_mirrors else train_least):
                # the size asked for with --min-size (not train_cam's crop, which is no smaller)
                msg = f"is smaller than --min-size {least}; lower --min-size or remove the image"
            else:
                msg = (f"is smaller than the crop/patch size {least}; lower the crop size (train_cam.crop_size / "
                       "data.patches.size), "
                       + ("set data.patches.border=pad" if cfg.patches is not None
                          else "set train_cam.small_images=mirror") + ", or remove the image")
            problems.append(Problem("error", image, f"image {ws}x{hs} (after image_scale {cfg.image_scale}) {msg}"))
        if s.points:
            from histowsss.data.points import check_points, parse_points_each

            clicks, bad = parse_points_each(s.points, cfg.classes, f"{cfg.points_column} column")
            problems += [Problem("error", image, msg) for msg in bad]  # every bad click of the cell, not the first
            for msg in check_points(clicks, (w, h), f"{cfg.points_column} column"):  # (as `run` says: left out)
                problems.append(Problem("warning", image, f"{msg}, left out by the steps; clicks are level-0 pixels "
                                        "(x = column, y = row) of the image"))
        if s.name in file_clicks:
            from histowsss.data.points import check_points

            for msg in check_points(list(file_clicks[s.name]), (w, h), str(points_file)):
                problems.append(Problem("warning", image, f"{msg}, left out by the steps; clicks are level-0 "
                                        "pixels (x = column, y = row) of the image"))
        if s.mask is None and from_masks and s.split in cfg.train_splits:
            rule = ("the manifest has no labels (data.label_column is null)" if not cfg.has_labels
                    else "data.patches.label_rule is mask_fraction")
            problems.append(Problem("error", image, f"training image without a mask, but its labels are read from "
                                    f"the masks ({rule}); fill in its {cfg.mask_column or 'mask'} column or remove "
                                    "the row"))
        if s.mask is not None:
            problem = _instance_mask_problem(s, cfg, (h, w))
            if problem is not None:
                problems.append(problem)
            mask = str(s.mask)
            turned = orientation_problem(s.image, s.mask)
            if turned:
                problems.append(Problem("warning", image, turned))
            raw = None
            try:
                raw = read_class_ids(s.mask, cfg, expected_hw=(h, w))
                cmap = class_map_from_mask(raw, s, cfg)
                looks_binary = cfg.mask_mode == "class_ids" and not cfg.mask_colors and not cfg.mask_values and \
                    255 not in cfg.mask_ignore_values and \
                    raw.max() == 255 and not np.isin(raw, (0, 255), invert=True).any()
                if looks_binary:
                    binary_like.append(mask)
                elif cfg.mask_mode == "class_ids" and cfg.has_labels and not classes_inferred:
                    names = cfg.classes.names
                    in_mask = {names[k] for k in np.unique(cmap).tolist() if k < len(names)} - {cfg.classes.background}
                    labelled = set(s.labels) - {cfg.classes.background}
                    masked_rows += 1
                    if in_mask - labelled:  # (labels may name a class a partial mask leaves out: not flagged)
                        disagree.append(f"row {s.row} {image}: labels {', '.join(sorted(labelled)) or 'none'}; mask "
                                        f"{', '.join(sorted(in_mask)) or 'none'}")
            except ImageReadError as e:
                problems.append(Problem("error", mask, f"{_message(e, mask)} (image: {image})"))
            except Exception as e:
                problems.append(Problem("error", mask, f"cannot be read ({type(e).__name__}: {e}) (image: {image})"))
            problems += mask_value_problems(s.mask, raw, cfg, image)
    if binary_like and not classes_inferred:  # (without a config the mask mode is a default, not the user's word)
        more = f" (and {len(binary_like) - 2} more)" if len(binary_like) > 2 else ""
        problems.append(Problem("warning", manifest, f"{len(binary_like)} mask(s) hold only the values 0 and 255, e.g. "
                                f"{', '.join(binary_like[:2])}{more}: with data.mask_mode=class_ids 255 means "
                                "'ignore', so they have no foreground pixel; if they are binary masks set "
                                "data.mask_mode to binary (with data.mask_foreground_class) or binary_image_label"))
    if disagree:
        order = ", ".join(f"{n}={i}" for i, n in enumerate(cfg.classes.names))
        mapped = "data.mask_values" if cfg.mask_values else "data.mask_colors" if cfg.mask_colors else None
        hint = (f"{mapped} says which class each mask {'value' if cfg.mask_values else 'colour'} is: check it, else "
                "fix the labels or the masks" if mapped else
                f"mask values index data.classes.names in its order ({order}); if the masks number the classes in "
                "another order, list the names in that order (`histowsss init --classes ...`), else fix the labels "
                "or the masks")
        problems.append(Problem("warning", manifest, f"{len(disagree)} of {masked_rows} masked image(s) hold classes "
                                f"their labels do not name, e.g. {'; '.join(disagree[:2])}: {hint}"))
    for r in rejected:  # rows left out for a row problem: their files are checked all the same
        problems += _file_problems(r["image"], r["mask"], cfg)
    for key, written in patient_spellings(samples).items():
        problems.append(Problem("warning", manifest,
                                f"patient id written {len(written)} ways ({', '.join(map(repr, written))}): read "
                                f"as one patient ({key!r}) in splits, folds and these checks (a spreadsheet writes "
                                "numbers either way); write it one way"))
    for p, splits in patient_split_overlap(samples).items():
        problems.append(Problem("warning", manifest,
                                f"patient {p} appears in splits {', '.join(splits)}: evaluation is not patient-disjoint "
                                "(make a grouped split with `histowsss data split`)"))
    return problems


__all__ = ["Problem", "check_dataset", "class_coverage", "image_size", "mask_value_problems"]
