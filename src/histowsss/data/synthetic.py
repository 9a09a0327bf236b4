"""Deterministic synthetic H&E gland data sets: the toolkit's embedded demo data.

No download is needed: :func:`generate_synthetic_dataset` renders a small colon-like
gland segmentation data set (GlaS-style) with image-level benign/malignant labels,
binary gland masks and gland instance masks, plus a ``manifest.csv``. Each image is
drawn by :func:`histowsss.data.synthetic_tissue.render_tissue`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image

from histowsss.data.synthetic_tissue import render_tissue
from histowsss.engine.atomic import write_bytes

__all__ = [
    "DEFAULT_N_PER_SPLIT",
    "MANIFEST_COLUMNS",
    "SPLITS",
    "generate_synthetic_dataset",
    "render_tissue",
]

GENERATOR_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_N_PER_SPLIT: dict[str, int] = {"train": 24, "val": 8, "test": 16}
MANIFEST_COLUMNS: tuple[str, ...] = ("image", "mask", "mask_cc", "split", "patient", "grade", "label", "name")
PARAMS_FILE = "synthetic.json"
MANIFEST_FILE = "manifest.csv"
_SUBDIRS = ("images", "masks", "masks_cc")
_NAME_RE = re.compile(r"^syn_(train|val|test)_\d+\.png$")


# --------------------------------------------------------------------------- #
# data set writer
# --------------------------------------------------------------------------- #
def _normalise_counts(n_per_split: dict[str, int] | None) -> dict[str, int]:
    if n_per_split is None:
        n_per_split = DEFAULT_N_PER_SPLIT
    unknown = set(n_per_split) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected a subset of {list(SPLITS)}")
    counts = {sp: int(n_per_split.get(sp, 0)) for sp in SPLITS}
    if any(c < 0 for c in counts.values()):
        raise ValueError(f"image counts must be >= 0, got {n_per_split}")
    if sum(counts.values()) == 0:
        raise ValueError("n_per_split requests no images")
    return counts


def _assign_patients(counts: dict[str, int], n_patients: int) -> dict[str, list[str]]:
    """Patient ids per split: proportional to image counts, >= 1 per non-empty split, disjoint."""
    active = [sp for sp in SPLITS if counts[sp] > 0]
    if n_patients < len(active):
        raise ValueError(f"n_patients={n_patients} is too small for {len(active)} non-empty splits (need >= 1 each)")
    total = sum(counts[sp] for sp in active)
    quota = {sp: n_patients * counts[sp] / total for sp in active}
    k = {sp: min(counts[sp], max(1, int(math.floor(quota[sp])))) for sp in active}
    # largest remainder, never more patients than images in a split
    while sum(k.values()) < n_patients:
        room = [sp for sp in active if k[sp] < counts[sp]]
        if not room:
            break
        sp = max(room, key=lambda t: (quota[t] - k[t], -SPLITS.index(t)))
        k[sp] += 1
    while sum(k.values()) > n_patients:  # only possible through the >= 1 floor
        sp = max((t for t in active if k[t] > 1), key=lambda t: k[t] - quota[t])
        k[sp] -= 1
    width = max(2, len(str(n_patients)))
    out: dict[str, list[str]] = {}
    nxt = 1
    for sp in active:
        out[sp] = [f"P{nxt + j:0{width}d}" for j in range(k[sp])]
        nxt += k[sp]
    return out


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _params(counts: dict[str, int], size: int, seed: int, n_patients: int) -> dict:
    return {
        "generator": "histowsss.data.synthetic",
        "version": GENERATOR_VERSION,
        "n_per_split": counts,
        "size": int(size),
        "seed": int(seed),
        "n_patients": int(n_patients),
    }


def _manifest_complete(out_dir: Path, manifest: Path) -> bool:
    try:
        with open(manifest, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error):
        return False
    return bool(rows) and all((out_dir / r[c]).is_file() for r in rows for c in ("image", "mask", "mask_cc"))


def generate_synthetic_dataset(
    out_dir: Path,
    n_per_split: dict[str, int] | None = None,
    size: int = 256,
    seed: int = 0,
    n_patients: int = 8,
    overwrite: bool = False,
) -> Path:
    """Write images/, masks/, masks_cc/ and manifest.csv under out_dir; return the manifest path.

    Images alternate benign (even index) / malignant (odd index) within each split; patients
    are disjoint across splits. Each image's random stream is derived from
    ``SeedSequence([seed, split_index, image_index])`` so the output is byte-identical for
    the same parameters. An existing data set generated with the same parameters is re-used;
    one with different parameters raises :class:`FileExistsError` unless ``overwrite=True``.
    """
    out_dir = Path(out_dir)
    counts = _normalise_counts(n_per_split)
    size = int(size)
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    patients = _assign_patients(counts, int(n_patients))
    params = _params(counts, size, seed, n_patients)
    manifest = out_dir / MANIFEST_FILE
    params_path = out_dir / PARAMS_FILE

    if manifest.exists() and not overwrite:
        try:
            existing = json.loads(params_path.read_text())
        except (OSError, ValueError):
            existing = None
        if existing != params:
            raise FileExistsError(
                f"{manifest} already exists and was not generated with the same parameters "
                f"({params_path.name}: {existing!r}, requested: {params!r}); "
                "regenerate it (overwrite=True; on the command line --overwrite) or choose another output folder"
            )
        if _manifest_complete(out_dir, manifest):
            return manifest
        # same parameters but files are missing: regenerating is harmless

    out_dir.mkdir(parents=True, exist_ok=True)
    if manifest.exists():
        manifest.unlink()  # the manifest marks a complete data set; drop it while rewriting
    for sub in _SUBDIRS:
        (out_dir / sub).mkdir(exist_ok=True)

    rows: list[dict[str, str]] = []
    written: set[str] = set()
    for si, split in enumerate(SPLITS):
        n = counts[split]
        for i in range(n):
            malignant = i % 2 == 1
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), si, i]))
            rgb, mask, inst = render_tissue(rng, size, malignant)
            name = f"syn_{split}_{i:03d}"
            fname = f"{name}.png"
            write_bytes(out_dir / "images" / fname, _png_bytes(rgb))
            write_bytes(out_dir / "masks" / fname, _png_bytes(mask.astype(np.uint8) * 255))
            write_bytes(out_dir / "masks_cc" / fname, _png_bytes(inst.astype(np.uint16)))
            written.add(fname)
            pts = patients[split]
            rows.append(
                {
                    "image": f"images/{fname}",
                    "mask": f"masks/{fname}",
                    "mask_cc": f"masks_cc/{fname}",
                    "split": split,
                    "patient": pts[i * len(pts) // n],
                    "grade": "malignant" if malignant else "benign",
                    "label": "1" if malignant else "0",
                    "name": name,
                }
            )

    # remove stale files of an earlier, larger generation (only our own naming pattern)
    for sub in _SUBDIRS:
        for p in (out_dir / sub).iterdir():
            if _NAME_RE.match(p.name) and p.name not in written:
                p.unlink()

    write_bytes(params_path, (json.dumps(params, indent=2, sort_keys=True) + "\n").encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(manifest, buf.getvalue().encode())
    return manifest
