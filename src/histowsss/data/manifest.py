"""The dataset manifest: a CSV with one row per image (path, split, patient, labels, optional mask/points)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histowsss.config import ClassMap, DataConfig

REQUIRED_COLUMNS = ("image", "split", "patient")


class ManifestError(ValueError):
    """The manifest cannot be used; the message lists every problem with row numbers and fixes."""


@dataclass(frozen=True)
class Sample:
    """One manifest row, resolved."""

    name: str
    image: Path
    split: str
    patient: str
    labels: tuple[str, ...]
    mask: Path | None = None
    points: str | None = None
    row: int = 0
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def target(self, classes: ClassMap) -> np.ndarray:
        """Multi-hot vector over all class names (float32)."""
        t = np.zeros(len(classes.names), dtype=np.float32)
        for lab in self.labels:
            t[classes.index(lab)] = 1.0
        return t


def _parse_labels(raw: str, cfg: DataConfig) -> tuple[str, ...]:
    raw = raw.strip()
    if raw == "":
        return ()
    parts = [p.strip() for p in raw.split(cfg.label_separator)] if cfg.multi_label else [raw]
    out = []
    for p in parts:
        if p not in cfg.classes.names and p.isdigit() and int(p) < len(cfg.classes.names):
            p = cfg.classes.names[int(p)]  # integer class indices are accepted too
        out.append(p)
    return tuple(out)


def read_manifest(cfg: DataConfig, splits: list[str] | None = None, check_files: bool = False) -> list[Sample]:
    """Read and validate the manifest named in ``cfg``; optionally keep only ``splits``.

    Raises ManifestError listing every problem (missing columns, unknown classes, missing files...).
    """
    path = Path(cfg.manifest)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found; pass the path of a CSV with columns "
                            f"{', '.join(REQUIRED_COLUMNS)}, {cfg.label_column}")
    root = Path(cfg.root) if cfg.root is not None else path.parent
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "") for k, v in r.items()} for r in reader]
    required = list(REQUIRED_COLUMNS) + ([cfg.label_column] if cfg.label_column else [])
    missing = [c for c in required if c not in columns]
    if missing:
        fix = []
        if "split" in missing:
            fix.append("add a split column with `histowsss data split MANIFEST --out NEW.csv`")
        if cfg.label_column in missing:
            fix.append(f"set data.label_column to one of the columns {columns}")
        raise ManifestError(
            f"{path}: missing required column(s) {', '.join(missing)} (has: {', '.join(columns)}). "
            + ("; ".join(fix) if fix else "Add them to the CSV header.")
        )
    problems: list[str] = []
    samples: list[Sample] = []
    names_seen: set[str] = set()
    for i, r in enumerate(rows, start=2):
        img_rel = r["image"].strip()
        if not img_rel:
            problems.append(f"row {i}: empty image path")
            continue
        labels = _parse_labels(r[cfg.label_column], cfg) if cfg.label_column else ()
        unknown = [lab for lab in labels if lab not in cfg.classes.names]
        if unknown:
            problems.append(
                f"row {i} ({img_rel}): unknown class {', '.join(map(repr, unknown))}; known classes: "
                f"{', '.join(cfg.classes.names)} (fix the row or add the class to data.classes.names)"
            )
            continue
        if cfg.label_column and not labels and cfg.classes.background is None:
            problems.append(f"row {i} ({img_rel}): no label and no background class is configured")
            continue
        mask = None
        if cfg.mask_column and cfg.mask_column in r and r[cfg.mask_column].strip():
            mask = root / r[cfg.mask_column].strip()
        name = r.get("name", "").strip() or Path(img_rel).stem
        if name in names_seen:
            problems.append(f"row {i} ({img_rel}): duplicate image name {name!r}; names must be unique")
            continue
        names_seen.add(name)
        image = root / img_rel
        if check_files and not image.exists():
            problems.append(f"row {i}: {image} not found; fix the path or restore the file")
        extra = {k: v for k, v in r.items() if k not in ("image", "split", "patient", "name")}
        points = r.get(cfg.points_column, "").strip() or None if cfg.points_column else None
        samples.append(Sample(name=name, image=image, split=r["split"].strip(), patient=r["patient"].strip(),
                              labels=labels, mask=mask, points=points, row=i, extra=extra))
    if problems:
        raise ManifestError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    if splits is not None:
        samples = [s for s in samples if s.split in splits]
    return samples


def patients_in_several_splits(samples: list[Sample]) -> dict[str, list[str]]:
    """Patients that appear in more than one split -> sorted list of their splits."""
    by_patient: dict[str, set[str]] = {}
    for s in samples:
        by_patient.setdefault(s.patient, set()).add(s.split)
    return {p: sorted(sp) for p, sp in sorted(by_patient.items()) if len(sp) > 1}


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    """Write manifest rows (dicts with the same keys) atomically."""
    import io

    from histowsss.engine.atomic import write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())
