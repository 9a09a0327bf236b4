"""Open every image and mask before a long run and list every problem."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from histowsss.config import DataConfig
from histowsss.data.io import ImageReadError, image_size, read_mask, read_rgb
from histowsss.data.manifest import ManifestError, scan_manifest
from histowsss.data.masks import class_map_from_mask
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


def check_dataset(cfg: DataConfig, min_size: int | None = None, progress: bool = True,
                  train_min_size: int | None = None, train_mirrors: bool = False) -> list[Problem]:
    """Return every problem found (errors and warnings); an empty list means the data is usable.

    Every manifest row problem, every unreadable/grayscale/too-small image, every unreadable or wrongly sized
    mask and every patient found in several splits is listed (nothing stops at the first problem).
    ``min_size`` (scaled pixels) defaults to the patch size when ``cfg.patches`` tiles without padding;
    ``train_min_size`` applies to the training splits only (train_cam's crop, which they must hold); with
    ``train_mirrors`` (``train_cam.small_images=mirror``) a training image under it is a warning (it will be
    mirrored out to the crop), not an error.
    """
    manifest = str(cfg.manifest)
    try:
        samples, row_problems = scan_manifest(cfg, check_files=True)
    except ManifestError as e:  # no manifest, or required columns missing: nothing else can be checked
        return [Problem("error", manifest, _message(e, manifest))]
    problems = [Problem("error", manifest, p) for p in row_problems]
    if not samples and not row_problems:
        problems.append(Problem("warning", manifest, "the manifest has no rows"))
    present = sorted({s.split for s in samples})
    for key, wanted in (("train_splits", cfg.train_splits), ("val_splits", cfg.val_splits),
                        ("test_splits", cfg.test_splits)):
        for split in wanted:
            if samples and split not in present:
                problems.append(Problem("warning", manifest,
                                        f"data.{key} names split {split!r} but no image is in it (the manifest has: "
                                        f"{', '.join(present)}); set data.{key} or fix the split column"))
    if min_size is None and cfg.patches is not None and cfg.patches.border != "pad":
        min_size = cfg.patches.size
    it = samples
    if progress:
        from rich.progress import track

        it = track(samples, description="checking images", transient=True)
    for s in it:
        image = str(s.image)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                img = read_rgb(s.image)
        except ImageReadError as e:
            problems.append(Problem("error", image, _message(e, image)))
            continue
        except Exception as e:  # anything unexpected is still reported per file, and the check goes on
            problems.append(Problem("error", image, f"cannot be read ({type(e).__name__}: {e})"))
            continue
        for w in caught:
            if issubclass(w.category, UserWarning):
                problems.append(Problem("warning", image, _message(w.message, image)))  # type: ignore[arg-type]
        h, w = img.shape[:2]
        hs, ws = round(h * cfg.image_scale), round(w * cfg.image_scale)
        train_least = (train_min_size or 0) if s.split in cfg.train_splits else 0
        least = max(min_size or 0, 0 if train_mirrors else train_least)
        if train_mirrors and train_least > least and min(hs, ws) < train_least:
            problems.append(Problem(
                "warning", image, f"image {ws}x{hs} (after image_scale {cfg.image_scale}) is smaller than "
                f"train_cam's crop {train_least}: train_cam will mirror it out to the crop (train_cam.small_images)"))
        if least and min(hs, ws) < least:
            problems.append(Problem(
                "error", image,
                f"image {ws}x{hs} (after image_scale {cfg.image_scale}) is smaller than the crop/patch size "
                f"{least}; lower the crop size (train_cam.crop_size / data.patches.size), "
                + ("set data.patches.border=pad" if cfg.patches is not None else "set train_cam.small_images=mirror")
                + ", or remove the image"))
        if s.points:
            from histowsss.data.points import PointsError, check_points, parse_points

            try:
                for msg in check_points(parse_points(s.points, cfg.classes, f"{cfg.points_column} column"), (w, h),
                                        f"{cfg.points_column} column"):
                    problems.append(Problem("error", image, f"{msg}; clicks are level-0 pixels (x = column, "
                                            "y = row) of the image"))
            except PointsError as e:
                problems.append(Problem("error", image, str(e)))
        if s.mask is not None:
            mask = str(s.mask)
            try:
                raw = read_mask(s.mask, expected_hw=(h, w))
                class_map_from_mask(raw, s, cfg)
            except ImageReadError as e:
                problems.append(Problem("error", mask, f"{_message(e, mask)} (image: {image})"))
            except Exception as e:
                problems.append(Problem("error", mask, f"cannot be read ({type(e).__name__}: {e}) (image: {image})"))
    for p, splits in patient_split_overlap(samples).items():
        problems.append(Problem("warning", manifest,
                                f"patient {p} appears in splits {', '.join(splits)}: evaluation is not patient-disjoint "
                                "(make a grouped split with `histowsss data split`)"))
    return problems


__all__ = ["Problem", "check_dataset", "image_size"]
