"""A manifest from a folder of labelled images (one sub-folder per class, optionally one per split first).

The layout tile and patch datasets ship in (torchvision's ImageFolder):

    ROOT/<class>/**/<image>                 split made here, patient-grouped (data/split.py)
    ROOT/<split>/<class>/**/<image>         split taken from the folder (train*, val*, valid*, dev*, test*)

Patients come from a regular expression on the image's path below ROOT (``patient_regex``); without one every
image is its own patient, which keeps nothing together (the caller is warned). Masks, optional, are found by
file stem in another folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from histowsss.data.io import IMAGE_SUFFIXES
from histowsss.data.manifest import write_manifest
from histowsss.data.split import grouped_stratified_split

SPLIT_FOLDER = re.compile(r"^(train|training|val|valid|validation|dev|test|testing)([-_]?[a-z0-9]+)?$", re.IGNORECASE)


class FolderLayoutError(ValueError):
    """The folder does not have the class-per-sub-folder layout, or a pattern does not fit its files."""


@dataclass
class FolderManifest:
    """What ``manifest_from_folder`` wrote: the file, the rows and how they were derived."""

    path: Path
    rows: list[dict[str, str]]
    splits_from_folders: bool
    patients_from_regex: bool
    masks_found: int = 0


def _images_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _direct_images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _subfolders(folder: Path, skip: set[Path]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.resolve() not in skip)


def _patient(rel: str, pattern: re.Pattern[str] | None) -> str | None:
    if pattern is None:
        return Path(rel).stem
    m = pattern.search(rel)
    if m is None:
        return None
    if "patient" in pattern.groupindex:
        return m.group("patient")
    return m.group(1) if pattern.groups else m.group(0)


def _mask_index(masks: Path, suffix: str) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for p in _images_below(masks):
        stem = p.stem
        if suffix:
            if not stem.endswith(suffix):
                continue
            stem = stem[: -len(suffix)]
        if stem in index:
            raise FolderLayoutError(f"{masks}: two masks for image stem {stem!r} ({index[stem].name} and {p.name}); "
                                    "keep one, or pass --mask-suffix to tell masks from other files")
        index[stem] = p
    return index


def manifest_from_folder(root: Path, out: Path, masks: Path | None = None, mask_suffix: str = "",
                         patient_regex: str | None = None, fractions: dict[str, float] | None = None,
                         label_column: str = "label", seed: int = 0, overwrite: bool = False) -> FolderManifest:
    """Write a manifest CSV (image, split, patient, label[, mask]) for the images below ``root``.

    Image and mask paths are written relative to the manifest's folder. When the top-level folders are not
    split names, a patient-grouped, class-stratified split with ``fractions`` (default 0.7 / 0.1 / 0.2) is made.
    Raises FolderLayoutError naming the folder or files and the fix.
    """
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: folder not found; pass the folder whose sub-folders are the classes")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    pattern = None
    if patient_regex is not None:
        try:
            pattern = re.compile(patient_regex)
        except re.error as e:
            raise FolderLayoutError(f"--patient-regex {patient_regex!r} is not a valid regular expression ({e})") from None
    skip = {masks.resolve()} if masks is not None else set()
    top = _subfolders(root, skip)
    loose = _direct_images(root)
    if loose:
        raise FolderLayoutError(f"{root}: {len(loose)} image(s) directly in the folder (e.g. {loose[0]}); put every "
                                "image in a sub-folder named after its class (ROOT/<class>/...), or write the manifest "
                                "yourself (docs/data.md)")
    if not top:
        raise FolderLayoutError(f"{root}: no sub-folders; expected ROOT/<class>/<images> or "
                                "ROOT/<split>/<class>/<images>")
    by_split = all(SPLIT_FOLDER.match(p.name) for p in top)
    groups: list[tuple[str, Path]] = []  # (split, class folder)
    for t in top:
        if by_split:
            classes = _subfolders(t, skip)
            stray = _direct_images(t)
            if stray or not classes:
                raise FolderLayoutError(f"{t}: a split folder must hold one sub-folder per class "
                                        f"({'images found directly in it, e.g. ' + stray[0] if stray else 'none found'})")
            groups.extend((t.name, c) for c in classes)
        else:
            groups.append(("", t))
    mask_index = _mask_index(masks, mask_suffix) if masks is not None else {}
    rows: list[dict[str, str]] = []
    unmatched: list[str] = []
    seen: dict[str, Path] = {}
    for split, cls in groups:
        images = _images_below(cls)
        for img in images:
            rel_root = img.relative_to(root).as_posix()
            patient = _patient(rel_root, pattern)
            if patient is None:
                unmatched.append(rel_root)
                continue
            if img.stem in seen:
                raise FolderLayoutError(f"{root}: two images named {img.stem!r} ({seen[img.stem].relative_to(root)} and "
                                        f"{rel_root}); image names must be unique: rename one")
            seen[img.stem] = img
            row = {"image": os.path.relpath(img, out.parent).replace(os.sep, "/"), "split": split,
                   "patient": patient, label_column: cls.name}
            if masks is not None:
                m = mask_index.get(img.stem)
                row["mask"] = os.path.relpath(m, out.parent).replace(os.sep, "/") if m is not None else ""
            rows.append(row)
    if unmatched:
        raise FolderLayoutError(f"--patient-regex {patient_regex!r} matches no patient in {len(unmatched)} image "
                                f"path(s) below {root}, e.g. {', '.join(unmatched[:3])}; the pattern is searched in the "
                                "path below the folder (use a group, or (?P<patient>...), for the id)")
    if not rows:
        raise FolderLayoutError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class sub-folders")
    labels = sorted({r[label_column] for r in rows})
    if len(labels) < 2:
        raise FolderLayoutError(f"{root}: one class only ({labels[0]}); a classifier needs at least two class "
                                "sub-folders (e.g. normal/ and tumour/)")
    if not by_split:
        fr = fractions or {"train": 0.7, "val": 0.1, "test": 0.2}
        fr = {k: v for k, v in fr.items() if v > 0}
        assign = grouped_stratified_split([r["patient"] for r in rows], [r[label_column] for r in rows], fr, seed)
        for r in rows:
            r["split"] = assign[r["patient"]]
    write_manifest(out, rows)
    return FolderManifest(path=out, rows=rows, splits_from_folders=by_split, patients_from_regex=pattern is not None,
                          masks_found=sum(1 for r in rows if r.get("mask")))
