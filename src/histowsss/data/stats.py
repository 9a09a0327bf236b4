"""Dataset tables: images and patients per split and class."""

from __future__ import annotations

from collections import defaultdict

from histowsss.data.manifest import Sample, patient_key


def split_class_table(samples: list[Sample], class_names: list[str]) -> list[dict[str, object]]:
    """One row per split (and a total): images and patients per class, the opening table of such reports."""
    rows = []
    splits = sorted({s.split for s in samples}, key=lambda x: (x not in ("train", "val"), x))
    for split in splits + ["all"]:
        sub = [s for s in samples if split == "all" or s.split == split]
        row: dict[str, object] = {"split": split, "images": len(sub),
                                  "patients": len({patient_key(s.patient) for s in sub})}
        for c in class_names:
            with_c = [s for s in sub if c in s.labels]
            row[f"{c} images"] = len(with_c)
            row[f"{c} patients"] = len({patient_key(s.patient) for s in with_c})
        rows.append(row)
    return rows


def patient_split_overlap(samples: list[Sample]) -> dict[str, list[str]]:
    """Patients found in two or more splits -> their splits."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        splits_of[patient_key(s.patient)].add(s.split)
    return {p: sorted(v) for p, v in sorted(splits_of.items()) if len(v) > 1}


MASK_COUNT_LIMIT = 5000  # images whose masks are read to count classes when there is no label column


def labels_from_masks(samples: list[Sample], data) -> tuple[list[Sample], str]:
    """Without image labels: each image's classes from its mask by the patch rule (the classes its patches carry,
    :func:`~histowsss.data.crops.mask_image_label`), as training derives them; and a note on the counts.
    Unchanged (with a note saying so) when some image has no mask, there are more than MASK_COUNT_LIMIT images,
    or a mask cannot be read."""
    import dataclasses

    from histowsss.data.crops import image_targets

    empty = ("no image-label column (data.label_column is null): per-class image counts are empty; training "
             "labels come from the masks (patch rule)")
    if not samples or len(samples) > MASK_COUNT_LIMIT or any(s.mask is None for s in samples):
        return samples, empty
    try:
        targets = image_targets(samples, data)
    except Exception:
        return samples, empty
    names = data.classes.names
    out = [dataclasses.replace(s, labels=tuple(n for n, t in zip(names, row) if t > 0.5))
           for s, row in zip(samples, targets)]
    rule = (f"some {data.patches.size}-px patch of it holds more than {100 * data.patches.min_fraction:g} % of it "
            "(the patch rule training labels come from)" if data.patches else "its mask holds it")
    return out, f"no image-label column (data.label_column is null): an image counts for a class when {rule}"
