"""A manifest from a folder of labelled images (one sub-folder per class, optionally one per split first).

The layout tile and patch datasets ship in (torchvision's ImageFolder):

    ROOT/<class>/**/<image>                 split made here, patient-grouped (data/split.py)
    ROOT/<split>/<class>/**/<image>         split taken from the folder (train*, val*, valid*, dev*, test*)

Patients come from a regular expression on the image's path below ROOT (``patient_regex``); without one every
image is its own patient, which keeps nothing together (the caller is warned). Masks, optional, are found by
file stem in other folders.

The public weakly supervised tissue data sets write each patch's multi-label vector into its file name instead
(LUAD-HistoSeg ``<patient>-<x>-<y>-[1 0 0 1].png``, BCSS-WSSS ``<image>+<k>[1101].png``, WSSS4LUAD
``...-[1, 1, 0].png``): :func:`manifest_from_named_labels` reads those, with the class names in vector order.

    ROOT/**/<name>[v1 v2 ...].png           split made here
    ROOT/<split>/**/<name>[...].png         split taken from the folder; images without a vector take the
                                            classes present in their mask (validation / test images)

QuPath's tile exporter (image tiles and ``-labelled`` label tiles side by side, named
``<slide> [d=2,x=..,y=..,w=..,h=..]``) is read the same way: its brackets are no label vector, so every tile takes
the classes of its label tile (``--masks`` the same folder, ``--mask-suffix -labelled``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histowsss.data.io import IMAGE_SUFFIXES, ImageReadError, image_stem
from histowsss.data.manifest import patient_key, write_manifest
from histowsss.data.split import grouped_stratified_split, strata_with_masks

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
    empty_folders: list[str] = field(default_factory=list)  # class folders without one readable image


def _images_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _direct_images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _subfolders(folder: Path, skip: set[Path]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.resolve() not in skip)


def _patient(rel: str, pattern: re.Pattern[str] | None) -> str | None:
    if pattern is None:
        return image_stem(rel)
    m = pattern.search(rel)
    if m is None:
        return None
    if "patient" in pattern.groupindex:
        return m.group("patient")
    return m.group(1) if pattern.groups else m.group(0)


def _compile_patient_regex(patient_regex: str | None) -> re.Pattern[str] | None:
    if patient_regex is None:
        return None
    try:
        return re.compile(patient_regex)
    except re.error as e:
        raise FolderLayoutError(f"--patient-regex '{patient_regex}' is not a valid regular expression ({e})") from None


def _claim(img: Path, root: Path, pattern: re.Pattern[str] | None, seen: dict[str, Path],
           unmatched: list[str]) -> str | None:
    """The patient of ``img`` (None, and noted in ``unmatched``, when the pattern finds none); refuses a second
    image of the same name."""
    rel = img.relative_to(root).as_posix()
    patient = _patient(rel, pattern)
    if patient is None:
        unmatched.append(rel)
        return None
    stem = image_stem(img)
    if stem in seen:
        raise FolderLayoutError(f"{root}: two images named {stem!r} ({seen[stem].relative_to(root)} and "
                                f"{rel}); image names must be unique: rename one")
    seen[stem] = img
    return patient


def _relpath(p: Path, out: Path) -> str:
    return os.path.relpath(p, out.parent).replace(os.sep, "/")


def _refuse_unmatched(root: Path, unmatched: list[str], patient_regex: str | None) -> None:
    if unmatched:
        raise FolderLayoutError(f"--patient-regex '{patient_regex}' matches no patient in {len(unmatched)} image "
                                f"path(s) below {root}, e.g. {', '.join(unmatched[:3])}; the pattern is searched in the "
                                "path below the folder (use a group, or (?P<patient>...), for the id)")


def _finish(root: Path, out: Path, rows: list[dict[str, str]], unmatched: list[str], patient_regex: str | None,
            by_split: bool, label_column: str, fractions: dict[str, float] | None, seed: int) -> FolderManifest:
    """Refuse unmatched patients, make the split when no split folders gave one, write the manifest."""
    _refuse_unmatched(root, unmatched, patient_regex)
    if not by_split:
        fr = {k: v for k, v in (fractions or {"train": 0.7, "val": 0.1, "test": 0.2}).items() if v > 0}
        strata = strata_with_masks([r[label_column] for r in rows], [bool(r.get("mask")) for r in rows])
        assign = grouped_stratified_split([patient_key(r["patient"]) for r in rows], strata, fr, seed)
        for r in rows:
            r["split"] = assign[patient_key(r["patient"])]
    write_manifest(out, rows)
    return FolderManifest(path=out, rows=rows, splits_from_folders=by_split, patients_from_regex=patient_regex is not None,
                          masks_found=sum(1 for r in rows if r.get("mask")))


def _mask_index(masks: list[Path], suffix: str) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for folder in masks:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: mask folder not found")
        for p in _images_below(Path(folder)):
            stem = image_stem(p)
            if suffix:
                if not stem.endswith(suffix):
                    continue
                stem = stem[: -len(suffix)]
            if stem in index:
                raise FolderLayoutError(f"{folder}: two masks for image stem {stem!r} ({index[stem]} and {p}); "
                                        "keep one, or pass --mask-suffix to tell masks from other files")
            index[stem] = p
    return index


def _without_masks(images: list[Path], root: Path, mask_dirs: set[Path], mask_index: dict[str, Path]) -> list[Path]:
    """``images`` less the mask files (masks kept beside the images, e.g. ``a.png`` + ``a_mask.png``) and the files
    below a mask folder (one that is not the image tree itself or a folder above it)."""
    files = {p.resolve() for p in mask_index.values()}
    r = root.resolve()
    apart = [m for m in mask_dirs if m != r and not r.is_relative_to(m)]
    return [p for p in images
            if p.resolve() not in files and not any(p.resolve().is_relative_to(m) for m in apart)]


def _as_list(masks: Path | list[Path] | None) -> list[Path]:
    return [] if masks is None else [Path(masks)] if isinstance(masks, (str, Path)) else [Path(m) for m in masks]


def manifest_from_folder(root: Path, out: Path, masks: Path | list[Path] | None = None, mask_suffix: str = "",
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
    pattern = _compile_patient_regex(patient_regex)
    masks = _as_list(masks) or None
    skip = {m.resolve() for m in masks or []}
    top = _subfolders(root, skip)
    loose = _direct_images(root)
    if loose:
        raise FolderLayoutError(f"{root}: {len(loose)} image(s) directly in the folder (e.g. {loose[0]}); put every "
                                "image in a sub-folder named after its class (ROOT/<class>/...); for tiles whose "
                                "classes are in their masks (QuPath's labelled tiles) pass --labels-in-name with the "
                                "classes in mask-value order and --masks; or write the manifest yourself "
                                "(docs/data.md)")
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
    empty: list[str] = []
    for split, cls in groups:
        n_before = len(rows)
        for img in _without_masks(_images_below(cls), root, skip, mask_index):
            patient = _claim(img, root, pattern, seen, unmatched)
            if patient is None:
                continue
            row = {"image": _relpath(img, out), "split": split, "patient": patient, label_column: cls.name}
            if masks is not None:
                m = mask_index.get(image_stem(img))
                row["mask"] = _relpath(m, out) if m is not None else ""
            rows.append(row)
        if len(rows) == n_before and not unmatched:
            empty.append(str(cls.relative_to(root)))
    _refuse_unmatched(root, unmatched, patient_regex)
    if not rows:
        raise FolderLayoutError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class sub-folders")
    labels = sorted({r[label_column] for r in rows})
    if len(labels) < 2:
        raise FolderLayoutError(f"{root}: one class only ({labels[0]}); a classifier needs at least two class "
                                "sub-folders (e.g. normal/ and tumour/)")
    from histowsss.data.manifest_facts import class_name_twins

    twins = class_name_twins(labels)
    if twins:  # (refused before anything is written: each spelling would be a class of its own)
        folders = [str(c.relative_to(root)) for _, c in groups if any(c.name in t for t in twins)]
        raise FolderLayoutError(f"{root}: class folders whose names differ only in case or spaces ("
                                + "; ".join(" / ".join(map(repr, t)) for t in twins) + f": {', '.join(folders)}); "
                                "each would be a class of its own: rename them so each class is written one way")
    made = _finish(root, out, rows, unmatched, patient_regex, by_split, label_column, fractions, seed)
    made.empty_folders = empty
    return made


NAMED_LABEL = re.compile(r"\[([^\[\]]*)\][^\[\]]*$")  # the last [...] of a file name


def label_from_name(stem: str, class_names: list[str]) -> list[str] | None:
    """The classes of a file name's multi-label vector (``[1 0 0 1]``, ``[1101]``, ``[1, 1, 0]``), in
    ``class_names`` order; None when the name carries no vector: no brackets, or brackets that hold more than
    digits, spaces and commas (QuPath's tile coordinates ``[d=2,x=4096,y=8192,w=512,h=512]``). Raises ValueError
    for a vector of the wrong length or with values other than 0 / 1."""
    m = NAMED_LABEL.search(stem)
    if m is None or not re.fullmatch(r"[\d\s,]+", m.group(1)):
        return None
    inside = m.group(1)
    bits = re.findall(r"\d+", inside) if re.search(r"[\s,]", inside.strip()) else list(inside.strip())
    if len(bits) != len(class_names) or any(b not in ("0", "1") for b in bits):
        raise ValueError(f"{stem}: label vector [{inside}] does not hold {len(class_names)} zeros and ones, one per "
                         f"class ({', '.join(class_names)})")
    return [c for c, b in zip(class_names, bits) if b == "1"]


def mask_colour_table(class_names: list[str], mask_colors: dict[str, str | list[str]]) -> dict[int, int]:
    """``--mask-colors`` (class or 'ignore' -> '#rrggbb', or a list of them) as packed 0xRRGGBB -> class id (ignore
    -> 255), checked as ``data.mask_colors`` is; FolderLayoutError naming what is wrong."""
    from pydantic import ValidationError

    from histowsss.config import DataConfig
    from histowsss.data.masks import mask_color_ids

    try:
        cfg = DataConfig(manifest=Path("."), classes={"names": class_names, "background": None},
                         mask_mode="class_ids", mask_colors=mask_colors)
    except ValidationError as e:
        msg = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())
        raise FolderLayoutError(f"--mask-colors: {msg}".replace("mask_colors maps", "give")) from None
    return mask_color_ids(cfg) or {}


def _classes_in_mask(path: Path, class_names: list[str], ignore: list[int],
                     colours: dict[int, int] | None = None) -> list[str]:
    from histowsss.data.io import ImageReadError, read_mask

    try:
        raw = read_mask(path, colors=colours)
    except ImageReadError as e:
        if colours is None and "colour mask" in str(e):  # the fix in this command's words
            raise FolderLayoutError(f"{path}: colour mask (its pixels are colours, not class ids): pass --mask-colors "
                                    "with the colour of each class, e.g. 'TE=#ff0000,NEC=#00ff00,ignore=#ffffff' "
                                    "(`histowsss init` takes the same)") from None
        raise
    present = [int(v) for v in np.unique(raw) if int(v) not in ignore and int(v) != 255]
    bad = [v for v in present if v >= len(class_names)]
    if bad:
        raise FolderLayoutError(f"{path}: mask values {bad[:5]} are not class ids 0..{len(class_names) - 1}; pass "
                                "--mask-ignore for values that mark pixels to leave out (e.g. 4 in LUAD-HistoSeg)")
    return [class_names[v] for v in present]


def manifest_from_named_labels(root: Path, out: Path, class_names: list[str], masks: list[Path] | None = None,
                               mask_suffix: str = "", mask_ignore: list[int] | None = None,
                               patient_regex: str | None = None, fractions: dict[str, float] | None = None,
                               label_column: str = "label", seed: int = 0, overwrite: bool = False,
                               mask_colors: dict[str, str | list[str]] | None = None) -> FolderManifest:
    """Write a manifest CSV (image, split, patient, label[, mask]) for the images below ``root`` whose file names
    carry a multi-label vector in ``class_names`` order (see the module docstring).

    Images without a vector take the classes present in their mask (``mask_ignore`` values and 255 left out; colour
    masks read through ``mask_colors``, class or 'ignore' -> '#rrggbb', as ``data.mask_colors``).
    Splits come from top-level split folders when every top-level folder is one, else a patient-grouped split
    stratified by label set is made. Raises FolderLayoutError naming the file and the fix.
    """
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: folder not found")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if len(class_names) < 2 or len(set(class_names)) != len(class_names):
        raise FolderLayoutError(f"--labels-in-name {','.join(class_names)}: give two or more distinct class names, "
                                "in the order of the file names' label vectors")
    if mask_colors and mask_ignore:
        raise FolderLayoutError("--mask-ignore and --mask-colors both say which mask pixels to leave out: give the "
                                "ignored colour in the map as ignore=#rrggbb")
    colours = mask_colour_table(class_names, mask_colors) if mask_colors else None
    pattern = _compile_patient_regex(patient_regex)
    mask_dirs = _as_list(masks)
    skip = {m.resolve() for m in mask_dirs}
    mask_index = _mask_index(mask_dirs, mask_suffix) if mask_dirs else {}
    top = _subfolders(root, skip)
    by_split = bool(top) and all(SPLIT_FOLDER.match(p.name) for p in top) and not _direct_images(root)
    images = _without_masks(_images_below(root), root, skip, mask_index)
    if not images:
        raise FolderLayoutError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) below it")
    rows: list[dict[str, str]] = []
    seen: dict[str, Path] = {}
    unmatched: list[str] = []
    bad: list[str] = []  # every file's problem, said together (a 16k-patch set is not fixed one file per call)
    for img in images:
        rel = img.relative_to(root).as_posix()
        try:
            try:
                labels = label_from_name(image_stem(img), class_names)
            except ValueError as e:  # (its message names the file's stem, which the path holds)
                raise FolderLayoutError(f"{rel}: {str(e).removeprefix(image_stem(img) + ': ')}") from None
            mask = mask_index.get(image_stem(img))
            if labels is None:
                if mask is None:
                    raise FolderLayoutError(f"{rel}: no label vector [..] at the end of its name and no mask to read "
                                            "its classes from; pass the mask folder(s) with --masks, or name the "
                                            "file <name>[1 0 ...].png")
                labels = _classes_in_mask(mask, class_names, list(mask_ignore or []), colours)
            if not labels:
                raise FolderLayoutError(f"{rel}: no class in its label (all zeros, or an empty mask); remove the "
                                        "image or fix its label")
        except (FolderLayoutError, ImageReadError) as e:  # each names its file (the image, or its mask)
            bad.append(str(e))
            continue
        patient = _claim(img, root, pattern, seen, unmatched)
        if patient is None:
            continue
        row = {"image": _relpath(img, out), "split": rel.split("/")[0] if by_split else "", "patient": patient,
               label_column: ";".join(labels)}
        if mask_dirs:
            row["mask"] = _relpath(mask, out) if mask is not None else ""
        rows.append(row)
    if bad:
        raise FolderLayoutError(f"{len(bad)} of {len(images)} image(s) cannot be listed:\n  " + "\n  ".join(bad[:20])
                                + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""))
    return _finish(root, out, rows, unmatched, patient_regex, by_split, label_column, fractions, seed)
