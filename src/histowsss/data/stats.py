"""Dataset tables: images and patients per split and class."""

from __future__ import annotations

from collections import defaultdict

from histowsss.data.manifest import Sample


def split_class_table(samples: list[Sample], class_names: list[str]) -> list[dict[str, object]]:
    """One row per split (and a total): images and patients per class, the opening table of such reports."""
    rows = []
    splits = sorted({s.split for s in samples}, key=lambda x: (x not in ("train", "val"), x))
    for split in splits + ["all"]:
        sub = [s for s in samples if split == "all" or s.split == split]
        row: dict[str, object] = {"split": split, "images": len(sub), "patients": len({s.patient for s in sub})}
        for c in class_names:
            with_c = [s for s in sub if c in s.labels]
            row[f"{c} images"] = len(with_c)
            row[f"{c} patients"] = len({s.patient for s in with_c})
        rows.append(row)
    return rows


def patient_split_overlap(samples: list[Sample]) -> dict[str, list[str]]:
    """Patients found in two or more splits -> their splits."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        splits_of[s.patient].add(s.split)
    return {p: sorted(v) for p, v in sorted(splits_of.items()) if len(v) > 1}
