"""A config for a user's own manifest: the image-label profile measured on GlaS, fitted to the data.

``config_for_manifest`` reads the manifest (labels, splits, masks, image sizes), starts from the builtin
``glas-malignant`` (CPU) or ``glas-malignant-gpu`` profile (image-level labels, the setting of most user data),
and fills in what depends on the data: classes and background, splits, mask mode, the resolution the network
works at (from the images' microns per pixel when given) and crop sizes that fit the images. Every choice it
makes is returned as a note, written at the top of the YAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from histowsss.config import ConfigError, RunConfig, builtin_config_path, validate_config
from histowsss.data.manifest import class_columns_labels, class_columns_of
from histowsss.data.manifest_facts import (BACKGROUND_NAMES, background_class, class_column_and_names,
                                           class_name_twins, class_order_check, label_separator_of, mask_mode_of,
                                           read_manifest_rows, short_sides, split_roles, tiling_mask_classes,
                                           tiling_mpp)

PROFILES = {"cpu": "glas-malignant", "gpu": "glas-malignant-gpu"}
# microns per network pixel of the profiles: GlaS at 0.62 um/px, read at data.image_scale 0.5 (CPU) or 1.0 (GPU)
NETWORK_MPP = {"cpu": 1.24, "gpu": 0.62}
PALETTE = ("#e6194b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#008080", "#9a6324")
BACKGROUND_COLOR = "#3cb44b"
SMALL_SIDE = 256  # images whose scaled short side is under this are read at full size when no mpp is given


@dataclass
class InitResult:
    """The config text, the validated config and the notes on what was chosen."""

    text: str
    config: RunConfig
    notes: list[str]


def _fit(value: int, side: int, multiple: int) -> int:
    return max(multiple, min(value, side // multiple * multiple))


def config_for_manifest(manifest: Path, profile: str = "cpu", background: str | None = None,
                        label_column: str | None = None, mask_mode: str | None = None, mpp: float | None = None,
                        image_scale: float | None = None, name: str | None = None,
                        label_separator: str | None = None, out: Path | None = None,
                        mask_ignore: list[int] | None = None, classes: list[str] | None = None,
                        label_columns: list[str] | None = None,
                        mask_colors: dict[str, str | list[str]] | None = None,
                        mask_values: dict[str, int | list[int]] | None = None) -> InitResult:
    """Build, validate and render a config for ``manifest``; raise ConfigError naming what to pass instead."""
    given = [k for k, v in (("--mask-colors", mask_colors), ("--mask-values", mask_values), ("--mask-mode", mask_mode))
             if v]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)} both say how masks are read: pass one (--mask-colors for colour "
                          "masks, --mask-values for values that are not class positions)")
    if (mask_colors or mask_values) and mask_ignore:
        raise ConfigError("--mask-ignore and --mask-colors / --mask-values: give the ignored value in the map as "
                          "ignore=... instead")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; use one of: {', '.join(PROFILES)}")
    manifest = Path(manifest)
    lines: list[int] = []  # (each row's line in the file, for messages)
    columns, rows = read_manifest_rows(manifest, lines)
    for col in ("image", "split", "patient"):
        if col not in columns:
            same = [c for c in columns if c.lower() == col]
            raise ConfigError(f"{manifest}: no {col!r} column (columns: {', '.join(columns)}); "
                              + (f"rename column {same[0]!r} to {col!r} (names are lower case)" if same else
                                 f"make a patient-grouped split with `histowsss data split {manifest} --out NEW.csv`"
                                 if col == "split" else
                                 "see docs/data.md, or make the manifest from a folder of class sub-folders with "
                                 "`histowsss data manifest`"))
    if label_columns and label_column:
        raise ConfigError("pass --label-column (a column of class names) or --label-columns (one 0/1 column per "
                          "class), not both")
    class_cols = list(label_columns or [])
    if not class_cols and label_column is None and "label" not in columns:
        class_cols = class_columns_of(columns, rows)  # one-hot / multi-hot columns, found
    found = ("; found: no 'label' column, and these hold 0/1 marks; if another column holds the class names, pass "
             "--label-column COLUMN") if class_cols and not label_columns else ""
    if class_cols:
        col, names, multi, marked = None, list(class_cols), False, []
        missing_cols = [c for c in class_cols if c not in columns]
        if missing_cols:
            raise ConfigError(f"{manifest}: no column(s) {', '.join(map(repr, missing_cols))} (columns: "
                              f"{', '.join(columns)}); --label-columns names one 0/1 column per class")
        for i, r in zip(lines, rows):
            labs, bad = class_columns_labels(r, class_cols)
            if bad:
                raise ConfigError(f"{manifest}: row {i}: class column value(s) {', '.join(bad)} are neither present "
                                  "(1, true, yes, x) nor absent (0, false, no, empty); write 1 or 0")
            marked.append(labs)
        multi = any(len(m) > 1 for m in marked)
    else:
        if label_separator is None:
            label_separator = label_separator_of(rows, label_column or ("label" if "label" in columns else None))
        col, names, multi = class_column_and_names(manifest, columns, rows, label_column, label_separator)
        marked = [tuple(p.strip() for p in r[col].split(label_separator)) if multi else (r[col].strip(),)
                  for r in rows]
    source = (f"column {col!r}" + (f" (the names of the {'label'!r} column's codes; --label-column label keeps "
                                   "the codes)" if col != (label_column or "label") and not class_cols else "")
              if col is not None
              else f"columns {', '.join(class_cols)} (one 0/1 column per class{found})")
    cut_classes = tiling_mask_classes(manifest)  # tiles cut by `data tiles` with masks: their values index these
    tiled_note = None
    order_from_tiles = False
    if cut_classes and not classes and not class_cols:
        if set(names) <= set(cut_classes):
            classes = list(cut_classes)
            order_from_tiles = True
            if background is None and cut_classes[0] not in names:  # class 0: pixels under no annotation
                background = cut_classes[0]
            tiled_note = (f"classes in the order of the tiles' --mask-classes ({', '.join(cut_classes)}, "
                          "tiling.json): mask value = position")
        else:
            tiled_note = (f"warning: the tiles' masks index --mask-classes {', '.join(cut_classes)} (tiling.json), "
                          f"but the labels name {', '.join(names)}: the masks score the label classes only where the "
                          "names agree (label the slides with the mask classes to measure every class)")
    twins = class_name_twins(names)
    if twins:
        raise ConfigError(f"{manifest}: {source} holds class names that differ only in case or spaces ("
                          + "; ".join(" / ".join(map(repr, v)) for v in twins) + "): fix the labels (typos?) so "
                          "each class is written one way")
    counts = {n: sum(n in m for m in marked) for n in names}
    rare = [n for n, k in counts.items() if k == 1]
    if classes:  # the given order: class-id masks are indexed by it
        missing = [n for n in names if n not in classes]
        if missing or len(set(classes)) != len(classes):
            raise ConfigError(f"--classes {','.join(classes)}: must name every class of the manifest once "
                              f"({', '.join(names)}; missing: {', '.join(missing) or 'none'})")
        names = list(classes)
    unmarked = class_cols and any(not m for m in marked)
    if class_cols and background is not None and background.lower() != "none" and background not in names:
        twin = [n for n in names if n.lower() == background.lower()]
        if twin:
            raise ConfigError(f"--background {background!r}: the class column is {twin[0]!r}; pass it as written")
        bg = background  # the class of images with no column marked, without a column of its own: mask value 0
        names = [bg] + names
    elif unmarked and (background is None or background.lower() == "none") and \
            not any(n.lower() in BACKGROUND_NAMES for n in names):
        raise ConfigError(f"{manifest}: some rows mark none of the class columns ({', '.join(class_cols)}{found}) "
                          "and there is no background class; pass --background NAME (the class of those images: it "
                          "becomes class 0 if no column holds it) or mark a class in every row")
    else:
        try:
            bg = background_class(names, background)
        except ConfigError as e:
            if not found:
                raise
            raise ConfigError(f"{e}. Classes from {source}") from None
    if unmarked and bg is None:
        raise ConfigError(f"{manifest}: some rows mark none of the class columns ({', '.join(class_cols)}{found}) "
                          "and there is no background class; pass --background NAME (the class of those images: it "
                          "becomes class 0 if no column holds it) or mark a class in every row")
    if bg is not None and not classes and not class_cols:
        names = [bg] + [n for n in names if n != bg]
    bg_first = ", the background first)" if bg is not None and bg not in class_cols else ")"
    order = (" in the order given by --classes (mask value = position)" if classes else
             " in column order (mask value = position" + bg_first
             + ": pass --classes in mask-value order if the masks hold class ids in another" if class_cols else None)
    if bg is not None:
        notes = [f"classes from {source}: {', '.join(names)} (background / normal: {bg})"
                 + (order or "; order: background first, then alphabetical (mask value = position): pass --classes "
                    "in mask-value order if the masks hold class ids")]
    else:
        notes = [f"classes from {source}: {', '.join(names)}, no background class (every pixel is one of "
                 "them; labels are the best of an image's labelled classes, docs/data.md)"
                 + (order or "; order alphabetical: pass --classes in mask-value order if the masks hold class ids")]
    if tiled_note:
        notes.append(tiled_note)
    if multi:
        notes.append("several labels per image " + (f"('{label_separator}'-separated)" if col is not None else
                                                     "(several columns marked)") + ": multi_label true")
    if rare:
        notes.append(f"warning: class(es) {', '.join(map(repr, rare))} label a single image: a typo? (fix the label, "
                     "or keep it: the CAM classifier can hardly learn a class from one image)")
    splits = split_roles(manifest, rows)
    notes.append("splits: " + "; ".join(f"{k[:-7]} = {', '.join(v)}" for k, v in splits.items() if v))
    notes.append(f"data.manifest {manifest.resolve()}: absolute, so the config runs from any folder; a run's step "
                 "hashes hold it, so moving the data makes the steps again unless it is written relative to the folder "
                 "you run from (README, Configs)")
    raw: dict[str, Any] = yaml.safe_load(builtin_config_path(PROFILES[profile]).read_text())
    root = manifest.parent
    # absolute: the config is often run from another folder than the one init ran in
    data: dict[str, Any] = {"manifest": str(manifest.resolve()), "label_column": col,
                            **({"label_columns": class_cols} if class_cols else {}), "multi_label": multi,
                            "classes": {"names": names, "background": bg,
                                        "colors": ({bg: BACKGROUND_COLOR} if bg is not None else {})
                                        | {n: PALETTE[i % len(PALETTE)]
                                           for i, n in enumerate(n for n in names if n != bg)}},
                            **splits}
    if col is not None and label_separator != ";":
        data["label_separator"] = label_separator
    if "points" in columns and any(r.get("points") for r in rows):  # clicks: used by the steps after the CAM stage
        data["points_column"] = "points"
        n = sum(len([c for c in r["points"].split(";") if c.strip()]) for r in rows if r.get("points"))
        notes.append(f"clicks from column 'points' ({n} on {sum(bool(r.get('points')) for r in rows)} images): "
                     "data.points_column points (docs/points.md)")
    masks = [r["mask"] for r in rows if r.get("mask")] if "mask" in columns else []
    if masks:
        data["mask_column"] = "mask"
        if mask_ignore:
            data["mask_ignore_values"] = list(mask_ignore)
            notes.append(f"mask values {', '.join(map(str, mask_ignore))} are no class: left out of every score "
                         "(data.mask_ignore_values)")
        if mask_colors:
            data.update(mask_mode="class_ids", mask_colors=dict(mask_colors))
            # overlays and QuPath show each class in its mask colour
            data["classes"]["colors"].update({k: v[0] if isinstance(v, list) else v for k, v in mask_colors.items()
                                              if k in names and k != bg})
            notes.append("colour masks: " + ", ".join(f"{k} {v}" for k, v in mask_colors.items())
                         + " (data.mask_colors; the classes are drawn in those colours)")
        elif mask_values:
            data.update(mask_mode="class_ids", mask_values=dict(mask_values))
            notes.append("mask values: " + ", ".join(f"{k} {v}" for k, v in mask_values.items())
                         + " (data.mask_values)")
        elif mask_mode is not None:
            data["mask_mode"] = mask_mode
            fg = [n for n in names if n != bg]
            if mask_mode == "binary" and len(fg) == 1:  # whatever order --classes gave: the one that is not background
                data["mask_foreground_class"] = fg[0]
            notes.append(f"mask_mode {mask_mode} (given)")
        else:
            try:
                mode, note = mask_mode_of(root, masks, names, bg, list(mask_ignore or []))
            except ConfigError as e:
                if not (cut_classes and tiled_note and tiled_note.startswith("warning")):
                    raise
                values = ", ".join(f"{k} = {c}" for k, c in enumerate(cut_classes))
                raise ConfigError(
                    f"{manifest}: the tiles' masks were cut with --mask-classes {', '.join(cut_classes)} "
                    f"(tiling.json: mask values {values}), but the labels ({source}) name {', '.join(names)}, so "
                    "the masks cannot be read as label classes. Say which mask value is which label class with "
                    "--mask-values 'CLASS=VALUE,...' (and ignore=VALUE for values to leave out of every score), or "
                    "cut the tiles again from annotations named as the labels' classes (or without --mask-classes "
                    f"when the masks are not needed). ({e})") from None
            data.update(mode)
            notes.append(note)
            if mode.get("mask_mode") == "class_ids":  # masks index the classes: in this order? (labels say)
                source = ("tiling.json" if order_from_tiles else "--classes" if classes else
                          "column order" if class_cols else "alphabetical")
                order_note = class_order_check(root, rows, marked, names, bg, list(mask_ignore or []), source,
                                                multi=multi or bool(class_cols))
                if order_note:
                    notes.append(order_note)
    else:
        data["mask_column"] = None
        notes.append("no masks: quality is not measured and there is no supervised upper bound")
    train_names = set(splits["train_splits"])
    train_images = [r["image"] for r in rows if r["split"] in train_names]
    sides = short_sides(root, train_images)
    tiled = tiling_mpp(manifest)
    from_tiling = tiled is not None and mpp is None and image_scale is None
    if from_tiling:
        # tiles cut by `data tiles` are at the resolution asked there: read as they are, and predict reads new
        # slides at it (data.mpp)
        mpp, image_scale = tiled, 1.0
        notes.append(f"tiles cut at {tiled} um/px by `histowsss data tiles` ({manifest.parent / 'tiling.json'}): "
                     f"data.mpp {tiled}, image_scale 1.0 (read as cut; predict reads new slides at {tiled} um/px). "
                     f"The {profile} profile was measured at {NETWORK_MPP[profile]} um/px: cut the tiles with --mpp "
                     f"{NETWORK_MPP[profile]} to work there")
    if image_scale is not None:
        scale = image_scale
        if not from_tiling:
            notes.append(f"image_scale {scale} (given)")
    elif mpp is not None:
        scale = round(mpp / NETWORK_MPP[profile], 4)
        notes.append(f"image_scale {scale}: images at {mpp} um/px read at {NETWORK_MPP[profile]} um/px, the "
                     f"resolution the {profile} profile was measured at on GlaS")
    else:
        scale = float(raw["data"].get("image_scale", 1.0))
        if float(np.median(sides)) * scale < SMALL_SIDE:
            scale = 1.0
            notes.append(f"image_scale 1.0: small images (median short side {int(np.median(sides))} px); pass --mpp "
                         "to read them at the profile's resolution instead")
        else:
            notes.append(f"image_scale {scale} (the profile's; pass --mpp to match the resolution it was measured at)")
    if mpp is not None:
        data["mpp"] = mpp
    data["image_scale"] = scale
    side = int(sides.min() * scale)
    if side < 64:
        raise ConfigError(f"{manifest}: the smallest training image is {int(sides.min())} px on its short side, "
                          f"{side} px at image_scale {scale}: too small to train on (>= 64 px); pass a larger "
                          "--image-scale or use larger tiles")
    typical = int(np.median(sides) * scale)
    fitted = []
    # train_cam mirrors smaller images out to its random crops (train_cam.small_images), train_irn mirrors and
    # train_seg pads them (labels ignore there), so the crops follow the typical image, not the smallest one, which
    # would shrink every crop for a few edge tiles (the data section written here has no patches)
    for section, key, multiple, limit in (("train_cam", "crop_size", 32, typical),
                                          ("train_irn", "crop_size", 16, typical),
                                          ("train_seg", "crop_size", 32, typical)):
        sec = raw.setdefault(section, {})
        current = int(sec.get(key, RunConfig.model_fields[section].default_factory().model_dump()[key]))
        new = _fit(current, limit, multiple)
        sec[key] = new
        if new != current:
            fitted.append(f"{section}.{key} {current} -> {new}")
    if fitted:
        notes.append(f"crops fitted to the images at image_scale {scale} (short side: smallest {side} px, median "
                     f"{typical} px): " + ", ".join(fitted))
    cam_crop = int(raw["train_cam"]["crop_size"])
    n_small = int((sides * scale < cam_crop).sum())
    if n_small:
        notes.append(f"{n_small} of {len(sides)} training images are smaller than train_cam's {cam_crop}-px crop: "
                     "train_cam mirrors them out to it (train_cam.small_images: refuse stops with their names "
                     "instead)")
    raw["data"] = data
    if bg is None:  # every class is a classifier output with its own CAM
        raw.setdefault("train_cam", {})["background_mode"] = "class"
    raw["name"] = name or (Path(out).stem if out is not None else manifest.stem)
    raw["upper_bound"] = bool(masks) and all(r.get("mask") for r in rows if r["split"] in train_names)
    train_masks = sum(bool(r.get("mask")) for r in rows if r["split"] in train_names)
    n_train = sum(r["split"] in train_names for r in rows)
    if masks and not raw["upper_bound"]:
        notes.append(f"upper_bound false: {train_masks} of {n_train} training images have a mask, and the supervised "
                     "upper bound trains on masks of every one (set train_seg.splits to splits with masks for one)")
    # `tune` scores out-of-fold predictions against the masks of training images: without any, it cannot run
    tune_hint = (" (`histowsss tune` needs masks for some training images: none have one here)" if not train_masks
                 else None)
    # IRN's 256 walk steps leaked across thin stroma on GlaS train; 16 steps were chosen there (docs/irn.md)
    raw.setdefault("sem_seg", {})["exp_times"] = 4
    notes.append("sem_seg.exp_times 4 (16 random-walk steps, chosen on GlaS train; IRN's 256 over-spread there)")
    es = raw.setdefault("eval_seg", {})
    cleanup = {k: es[k] for k in ("min_object_area", "max_hole_area", "split_h") if es.get(k)}
    if cleanup:  # chosen for GlaS glands (sizes in GlaS pixels, touching glands split): not for other objects
        es.update({k: 0 for k in cleanup})
        grid = "--object-areas 0,400,1600" + (" --hole-areas 0,400 --split-h 0,12,18" if bg is not None else "")
        notes.append("eval_seg object clean-up off (the profile's " + ", ".join(f"{k} {v}" for k, v in cleanup.items())
                     + " was chosen for GlaS glands)" + (tune_hint or
                                                         f"; choose it on your data with `histowsss tune RUN {grid}` "
                                                         "(it scores objects: the training images need instance "
                                                         "masks, a mask_cc column)"))
    if es.get("image_gate"):
        # eval_cam's cut is chosen on images the classifier trained on; on unseen GlaS patients it cost malignant
        # IoU, and no cut gained more than 0.5 (bench/results/seg_crossval_glas-malignant.cpu.json)
        raw["eval_seg"]["image_gate"] = False
        raw["eval_seg"]["image_gate_cut"] = None
        notes.append("eval_seg.image_gate off: on GlaS it changed little and a cut chosen on training images removed "
                     "classes from unseen patients' images" + (tune_hint or
                                                              "; choose it on your patients with `histowsss tune RUN "
                                                              "--gate-cuts 0.5,0.2,0.05 --holdout-classifier "
                                                              "--criterion iou_<class>`"))
    cfg = validate_config(raw, origin=f"config for {manifest}")
    header = [f"# histowsss config for {manifest}, made by `histowsss init` from the {PROFILES[profile]} profile",
              "# (image-level labels; CAM -> IRN -> segmentation network). What was chosen from the data:"]
    header += [f"#   - {n}" for n in notes]
    header += [f"# Check the data before a long run: histowsss data check {manifest} --config {out or 'THIS_FILE'}",
               "# Every key: docs/config.md; override any with --set section.key=value.", ""]
    text = "\n".join(header) + "\n" + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=110)
    return InitResult(text=text, config=cfg, notes=notes)
