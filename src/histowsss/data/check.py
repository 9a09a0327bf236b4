"""Open every image and mask before a long run and list every problem."""

from __future__ import annotations

from dataclasses import dataclass

from histowsss.config import DataConfig
from histowsss.data.io import ImageReadError, image_size, read_mask, read_rgb
from histowsss.data.manifest import ManifestError, read_manifest
from histowsss.data.masks import class_map_from_mask
from histowsss.data.stats import patient_split_overlap


@dataclass
class Problem:
    """One problem found in the dataset."""

    level: str  # "error" or "warning"
    file: str
    message: str


def check_dataset(cfg: DataConfig, min_size: int | None = None, progress: bool = True) -> list[Problem]:
    """Return every problem found (errors and warnings); an empty list means the data is usable."""
    try:
        samples = read_manifest(cfg)
    except ManifestError as e:
        return [Problem("error", str(cfg.manifest), str(e))]
    problems: list[Problem] = []
    it = samples
    if progress:
        from rich.progress import track

        it = track(samples, description="checking images")
    for s in it:
        try:
            img = read_rgb(s.image)
        except ImageReadError as e:
            problems.append(Problem("error", str(s.image), str(e)))
            continue
        except Warning as w:  # pragma: no cover - warnings are not errors
            problems.append(Problem("warning", str(s.image), str(w)))
            continue
        h, w = img.shape[:2]
        if min_size is not None and min(h * cfg.image_scale, w * cfg.image_scale) < min_size:
            problems.append(Problem(
                "error", str(s.image),
                f"image {w}x{h} (x{cfg.image_scale}) is smaller than the crop/patch size {min_size}; "
                "lower the crop size, set data.patches.border=pad, or remove the image"))
        if s.mask is not None:
            try:
                raw = read_mask(s.mask, expected_hw=(h, w))
                class_map_from_mask(raw, s, cfg)
            except ImageReadError as e:
                problems.append(Problem("error", str(s.mask), str(e)))
    for p, splits in patient_split_overlap(samples).items():
        problems.append(Problem("warning", str(cfg.manifest),
                                f"patient {p} appears in splits {', '.join(splits)}: evaluation is not patient-disjoint "
                                "(make a grouped split with `histowsss data split`)"))
    return problems


__all__ = ["Problem", "check_dataset", "image_size"]
