"""`histowsss data ...`: stats, check, stain-reference, split, manifest, synth, tiles."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from histowsss.cli.common import (check_out_file, class_colours, clear_errors, comma_list, console, data_config_from,
                                  log_line, stop_on_interrupt)

app = typer.Typer(help="Inspect, check, split and generate datasets.", no_args_is_help=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="config (path or builtin name) giving classes/label column")
SetOpt = typer.Option(None, "--set", "-s", help="override, e.g. data.label_column=grade")


@app.command()
def stats(manifest: Path, config: Optional[str] = ConfigOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Print images and patients per split and class; warn when a patient is in two splits."""
    with clear_errors():
        dc = data_config_from(manifest, config, set_, log=_note)
        _print_stats(manifest, dc)


def _note(msg: str) -> None:
    console.print(f"note: {escape(msg)}", highlight=False)


def _wide_stats_table(rows: list[dict], title: str) -> Table:
    """One row per split; images and patients, then both per class."""
    table = Table(title=escape(title))
    for k in rows[0]:
        table.add_column(escape(k), justify="right" if k != "split" else "left", no_wrap=k == "split",
                         overflow="fold")
    for r in rows:
        table.add_row(*[escape(str(v)) for v in r.values()])
    return table


def _long_stats_table(rows: list[dict], classes: list[str], title: str) -> Table:
    """The same counts with one row per split and class (no class header is folded in a narrow terminal)."""
    table = Table(title=escape(title))
    for k in ("split", "class", "images", "patients"):
        table.add_column(k, justify="left" if k in ("split", "class") else "right", no_wrap=True)
    for r in rows:
        table.add_row(escape(str(r["split"])), "(any)", str(r["images"]), str(r["patients"]))
        for c in classes:
            table.add_row("", escape(c), str(r[f"{c} images"]), str(r[f"{c} patients"]))
        table.add_section()
    return table


def _print_stats(manifest: Path, dc) -> None:
    """The images / patients per split and class table, and the patient-overlap warning."""
    from rich.console import Console

    from histowsss.data.manifest import read_manifest
    from histowsss.data.stats import labels_from_masks, patient_split_overlap, split_class_table

    samples = read_manifest(dc)
    note = None
    if not dc.has_labels:  # labels read off the masks: count them as training derives them
        samples, note = labels_from_masks(samples, dc)
    rows = split_class_table(samples, dc.classes.names)
    out = Console()
    # the wide table when every header word comes out whole at this width; else one row per split and class
    table = _wide_stats_table(rows, str(manifest))
    trial = Console(width=out.width, file=io.StringIO(), color_system=None)
    trial.print(table)
    words = {w for k in rows[0] for w in str(k).split()}
    # a header word rich cut leaves a piece that begins it and is no header word itself ('squamous_carcinom')
    pieces = set(re.split(r"[\s\u2500-\u257f|]+", trial.file.getvalue()))
    if any(p and p not in words and w.startswith(p) for w in words for p in pieces):
        table = _long_stats_table(rows, dc.classes.names, str(manifest))
    out.print(table)
    if note:
        console.print(f"note: {escape(note)}", highlight=False)
    overlap = patient_split_overlap(samples)
    if overlap:
        shown = list(overlap.items())[:10]
        more = f", ... ({len(overlap) - len(shown)} more)" if len(overlap) > len(shown) else ""
        console.print(f"[yellow]warning:[/] {len(overlap)} patient(s) appear in more than one split "
                      "(evaluation is not patient-disjoint): "
                      + escape(", ".join(f"{p} ({'/'.join(s)})" for p, s in shown)) + more
                      + "; make a grouped split with `histowsss data split`", highlight=False)


@app.command()
def check(manifest: Path, config: Optional[str] = ConfigOpt, set_: Optional[list[str]] = SetOpt,
          min_size: Optional[int] = typer.Option(
              None, help="smallest usable image side after data.image_scale (default: with --config, training "
              "images under train_cam's crop are errors with train_cam.small_images=refuse, warnings when mirrored; "
              "data.patches.size when patches are not padded)")) -> None:
    """Open every image and mask; list every problem; exit 1 if any error is found."""
    from histowsss.data.check import check_dataset

    with clear_errors():
        dc = data_config_from(manifest, config, set_, log=_note)
        train_min, mirrors, points_file, gate_tiles = None, False, None, True
        padded = dc.patches is not None and dc.patches.border == "pad"  # padded patches accept small images
        if config is not None:
            from histowsss.config import load_config

            full = load_config(config, set_)
            points_file = full.points.file
            # the patch gate and train_seg's patch veto tile masked val images too
            gate_tiles = full.eval_cam.label_gating == "patch" or full.train_seg.patch_veto
            if min_size is None and not padded:  # train_cam refuses images smaller than its crop
                from histowsss.data.crops import training_crop_size

                train_min = training_crop_size(dc, full.train_cam)
                mirrors = full.train_cam.small_images == "mirror" and dc.patches is None
        problems = check_dataset(dc, min_size=min_size, train_min_size=train_min, train_mirrors=mirrors,
                                 points_file=points_file, gate_tiles=gate_tiles,
                                 # classes named (a config, or --set data.classes...) are the user's word: checked
                                 classes_inferred=config is None and not any(
                                     o.replace(" ", "").startswith("data.classes") for o in set_ or []))
        if config is not None:  # the steps' own splits: test images trained on or used to choose settings
            from histowsss.config import step_split_leaks
            from histowsss.data.check import Problem

            problems += [Problem("error", str(manifest), m) for m in step_split_leaks(full)]
    errors = [p for p in problems if p.level == "error"]
    for p in problems:
        colour = "red" if p.level == "error" else "yellow"
        console.print(f"[{colour}]{p.level}[/]: {escape(p.file)}: {escape(p.message)}", highlight=False, markup=True,
                      soft_wrap=True)
    console.print(f"{escape(str(manifest))}: {len(errors)} error(s), {len(problems) - len(errors)} warning(s)",
                  highlight=False, soft_wrap=True)
    if errors:
        raise typer.Exit(1)


@app.command("stain-reference")
def stain_reference(manifest: Path, method: str = typer.Option(..., "--method", "-m", help="reinhard or macenko"),
                    split: Optional[list[str]] = typer.Option(
                        None, "--split", help="splits whose images to measure (default: data.train_splits)"),
                    max_images: int = typer.Option(
                        200, min=1, help="measure at most this many images (a fixed random sample of them)"),
                    config: Optional[str] = ConfigOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Measure a data.stain_reference on a manifest's training images; print it as config YAML (stdout)."""
    from rich.progress import track

    from histowsss.data.io import read_rgb
    from histowsss.data.manifest import read_manifest
    from histowsss.data.stain import measure_reference

    if method not in ("reinhard", "macenko"):
        raise typer.BadParameter(f"{method!r}: give reinhard or macenko", param_hint="--method")
    with clear_errors():
        dc = data_config_from(manifest, config, set_, log=_note)
        splits = split or dc.train_splits
        samples = read_manifest(dc, splits=splits)
        if not samples:
            raise ValueError(f"{manifest}: no images in split(s) {', '.join(splits)}; name the splits to measure "
                             "with --split")
        total = len(samples)
        if total > max_images:  # the same sample every time
            import random

            samples = sorted(random.Random(0).sample(samples, max_images), key=lambda s: s.row)
        images = (read_rgb(s.image, scale=dc.image_scale) for s in
                  track(samples, description=f"{method} statistics", console=console, transient=True))
        ref = measure_reference(method, images)
    # on stdout, so that it can go into a config file (`... > stain.yaml`)
    of = f" (a random sample of {total})" if total > len(samples) else ""
    typer.echo(f"# measured on {len(samples)} images{of} of split(s) {', '.join(splits)} of {manifest}\n"
               f"data:\n  stain_normalization: {method}\n  stain_reference: {ref}")


@app.command()
def split(manifest: Path, out: Path = typer.Option(..., "--out", "-o", help="new manifest with a split column (relative paths rewritten to name the same files from its folder)"),
          train: float = 0.7, val: float = 0.1, test: float = 0.2, seed: int = 0,
          label_column: str = typer.Option("label", help="column whose classes are stratified"),
          label_columns: Optional[str] = typer.Option(None, help="instead: comma-separated 0/1 columns, one per class "
                                                      "(default: found when there is no label column)"),
          keep_test: bool = typer.Option(False, "--keep-test", help="the manifest has a split column: keep its "
                                         "test split(s) (test*) as they are and split the other images into train "
                                         "and val (--train / --val fractions, rescaled)"),
          replace: bool = typer.Option(False, "--replace", help="the manifest has a split column: draw a new split "
                                       "of every image, test images included"),
          overwrite: bool = False) -> None:
    """Write a patient-grouped, class-stratified split (no patient in two splits); when only some images have a
    mask, those are spread over the splits too. A manifest that already has a test split needs --keep-test or
    --replace, so that a fixed test set does not move into training unnoticed."""
    from histowsss.data.manifest_facts import split_role
    from histowsss.data.manifest import (class_columns_labels, class_columns_of, patient_key, read_csv_rows,
                                         rebase_paths, write_manifest)
    from histowsss.data.split import grouped_stratified_split, strata_with_masks

    with clear_errors():
        check_out_file(out, overwrite, reads=(manifest,))
        lines: list[int] = []
        columns, rows = read_csv_rows(manifest, lines=lines)
        # the class columns: given, or found when there is no label column and none was named (--label-column left
        # at its default), and said, since two 0/1 flag columns look the same
        class_cols = [c.strip() for c in label_columns.split(",") if c.strip()] if label_columns else (
            class_columns_of(columns, rows) if label_column == "label" and label_column not in columns else [])
        if class_cols and not label_columns:
            _note(f"stratified by the 0/1 columns {', '.join(class_cols)} (found: no 'label' column); pass "
                  "--label-column COLUMN if another column holds the class names")
        for col in ["patient"] + (class_cols or [label_column]):
            if col not in columns:
                same = [c for c in columns if c.lower() == col.lower()]
                fix = (f"rename column {same[0]!r} to {col!r}" if same else
                       "add a 'patient' column (use the image name where the patient is unknown)" if col == "patient"
                       else f"pass --label-column with one of: {', '.join(columns)}, or --label-columns with its "
                       "0/1 class columns")
                raise ValueError(f"{manifest}: no {col!r} column; splitting needs patient ids and labels: {fix}")
        if not rows:
            raise ValueError(f"{manifest}: no rows to split")
        if not class_cols:  # (as `init` and `run` refuse them: each spelling would be a stratum, a class, of its own)
            from histowsss.data.manifest_facts import class_name_twins

            if twins := class_name_twins(sorted({r[label_column].strip() for r in rows if r[label_column].strip()})):
                raise ValueError(f"{manifest}: column {label_column!r} holds class names that differ only in case or "
                                 "spaces (" + "; ".join(" / ".join(map(repr, t)) for t in twins) + "): fix the labels "
                                 "(typos?) so each class is written one way")
        empty = [str(i) for i, r in zip(lines, rows) if not r["patient"]]
        if empty:
            raise ValueError(f"{manifest}: empty patient id in row(s) {', '.join(empty[:20])}; fill them in "
                             "(use the image name where the patient is unknown)")
        existing = {r.get("split", "") for r in rows} - {""}
        if keep_test and replace:
            raise typer.BadParameter("pass --keep-test or --replace, not both", param_hint="--keep-test")
        given = ", ".join(f"{k} {sum(r.get('split') == k for r in rows)}" for k in sorted(existing))
        has_test = any(split_role(k) == "test_splits" for k in existing)
        if has_test and not (keep_test or replace):
            raise ValueError(f"{manifest}: already has a split column (images: {given}); a new split would move "
                             "its test images into training. Pass --keep-test to keep its test split(s) and split "
                             "the other images into train / val, or --replace to draw a new split of every image")
        if (keep_test or replace) and not existing:
            _note("the manifest has no split yet: --keep-test / --replace change nothing")
        elif existing and not has_test and not keep_test:
            _note(f"the split column (images: {given}) is replaced")
        kept = {}  # patient key -> the test split it is in (--keep-test)
        if keep_test and existing:
            for r in rows:
                if split_role(r.get("split", "")) == "test_splits":
                    kept.setdefault(patient_key(r["patient"]), r["split"])
            if not kept:
                raise ValueError(f"{manifest}: --keep-test, but none of its splits ({', '.join(sorted(existing))}) "
                                 "is a test split (named test*); pass --replace to split every image")
            if train + val <= 0:
                raise typer.BadParameter("--keep-test splits the other images by --train and --val: give them",
                                         param_hint="--train")
            if test > 0:
                _note(f"--keep-test: the test split(s) are kept as they are, so --test {test:g} is not used; the other "
                      f"images are split {train / (train + val):.2f} / {1 - round(train / (train + val), 2):.2f} "
                      "into train / val")
        fractions = {k: v for k, v in {"train": train, "val": val, "test": test}.items() if v > 0}
        if kept:
            fractions = {k: v / (train + val) for k, v in {"train": train, "val": val}.items() if v > 0}
        marks = [class_columns_labels(r, class_cols) for r in rows] if class_cols else []
        bad = [f"row {i}: {', '.join(b)}" for i, (_, b) in zip(lines, marks) if b]
        if bad:
            raise ValueError(f"{manifest}: class column cells that are neither present (1, true, yes, x) nor absent "
                             f"(0, false, no, empty): {'; '.join(bad[:10])}" + (" ..." if len(bad) > 10 else "")
                             + "; write 1 or 0")
        strata = [";".join(labs) for labs, _ in marks] if class_cols else [r[label_column] for r in rows]
        strata = strata_with_masks(strata, [bool(r.get("mask")) for r in rows])
        keys = [patient_key(r["patient"]) for r in rows]
        in_test = [bool(kept) and split_role(r.get("split", "")) == "test_splits" for r in rows]
        free = [i for i, k in enumerate(keys) if k not in kept]  # test patients' other images stay with them
        moved = sum(1 for r, k, t in zip(rows, keys, in_test) if k in kept and not t)
        if kept and not free:
            raise ValueError(f"{manifest}: every image's patient is in the test split(s); nothing left to split")
        if class_cols:
            row_classes = [set(labs) for labs, _ in marks]
        else:
            from histowsss.data.manifest_facts import label_separator_of

            sep = label_separator_of(rows, label_column)
            row_classes = [{c.strip() for c in r[label_column].split(sep) if c.strip()} for r in rows]
        assign = grouped_stratified_split([keys[i] for i in free], [strata[i] for i in free], fractions, seed,
                                          row_classes=[row_classes[i] for i in free], cover="train")
        for r, k, t in zip(rows, keys, in_test):
            if not t:  # a test row keeps its split (a patient in testA and testB stays in both)
                r["split"] = kept[k] if k in kept else assign[k]
        empty = [sp for sp in fractions if sp not in assign.values()]
        if empty:  # too few patients: every class's training patient came first
            console.print(f"[yellow]warning:[/] {', '.join(empty)} got no patient: {len(set(assign))} patient(s) "
                          "cannot give every class a training patient and every split one (a class no training image "
                          "carries cannot be learnt, so training came first); add patients, or label more images of "
                          "the rare class(es)", highlight=False)
        untrained = sorted(set().union(*row_classes) - set().union(*(c for r, c in zip(rows, row_classes)
                                                                       if r["split"] == "train")))
        if untrained:  # (a class whose every image a kept test split holds)
            console.print(f"[yellow]warning:[/] class(es) {', '.join(untrained)} have no training image (their images "
                          "are all in the kept test split(s)): they cannot be learnt; label training images with "
                          "them, or leave them out of the classes", highlight=False)
        if kept:
            _note(f"kept the test split(s) {', '.join(sorted(set(kept.values())))} ({len(kept)} patients)"
                  + (f"; {moved} other image(s) of their patients joined them (a patient stays out of training; one "
                     "in several test splits: the first in the file), so the test split(s) now hold "
                     f"{sum(r['split'] in kept.values() for r in rows)} of {len(rows)} images" if moved else ""))
        # relative paths that name files from the manifest's folder keep naming them from --out's folder
        rebased = rebase_paths(rows, manifest.parent, out.parent)
        write_manifest(out, rows)
    counts: dict[str, int] = {}
    with_masks: dict[str, int] = {}
    for r in rows:
        counts[r["split"]] = counts.get(r["split"], 0) + 1
        with_masks[r["split"]] = with_masks.get(r["split"], 0) + bool(r.get("mask"))
    partial = 0 < sum(with_masks.values()) < len(rows)  # masks for some images: say where they went
    console.print(f"wrote {escape(str(out))}: " + ", ".join(f"{k} {v} images" + (f" ({with_masks[k]} with masks)"
                                                                             if partial else "")
                                                          for k, v in counts.items())
                  + (f"; {rebased} relative path(s) rewritten for its folder" if rebased else ""))


@app.command()
def manifest(folder: Path = typer.Argument(..., help="folder of class sub-folders: FOLDER/<class>/... or "
                                          "FOLDER/<split>/<class>/... (or, with --labels-in-name, any images)"),
             out: Path = typer.Option(..., "--out", "-o", help="manifest CSV to write (paths relative to it)"),
             masks: Optional[list[Path]] = typer.Option(
                 None, help="folder of masks, matched to images by file stem (repeat for several folders)"),
             labels_in_name: Optional[str] = typer.Option(
                 None, help="comma-separated classes of the multi-label vector at the end of each file name, in "
                 "order, e.g. TE,NEC,LYM,TAS for LUAD-HistoSeg's '...-[1 0 0 1].png' (BCSS-WSSS: '[1101]'); images "
                 "without one take the classes present in their mask"),
             mask_ignore: Optional[str] = typer.Option(
                 None, help="with --labels-in-name: comma-separated mask values that are no class (e.g. 4)"),
             mask_colors: Optional[str] = typer.Option(
                 None, help="with --labels-in-name and colour masks: comma-separated CLASS=#rrggbb (and "
                 "ignore=#rrggbb for pixels of no class), e.g. 'TE=#ff0000,NEC=#00ff00,ignore=#ffffff'"),
             mask_suffix: str = typer.Option("", help="suffix of mask stems, e.g. '_mask' for img1_mask.png"),
             patient_regex: Optional[str] = typer.Option(
                 None, help="regular expression searched in each image's path below FOLDER; its first group (or "
                 "(?P<patient>...)) is the patient, e.g. '^[^/]+/(TCGA-..-....)'; default: every image its own patient"),
             train: float = 0.7, val: float = 0.1, test: float = 0.2, seed: int = 0,
             label_column: str = typer.Option("label", help="name of the class column"),
             overwrite: bool = False) -> None:
    """Write a manifest for a folder of labelled images (one sub-folder per class, optionally per split first; or
    multi-label vectors in the file names with --labels-in-name); without split folders, a patient-grouped,
    class-stratified split is made."""
    from histowsss.data.folder_manifest import IMAGE_SUFFIXES, manifest_from_folder, manifest_from_named_labels
    from histowsss.data.manifest import patient_key

    with clear_errors():
        check_out_file(out, overwrite)
        if mask_suffix and not masks:
            raise ValueError(f"--mask-suffix {mask_suffix} names the masks found in --masks; give --masks too (the "
                             f"image folder itself, e.g. --masks {folder}, when masks lie beside the images: they are "
                             "then not listed as images)")
        fractions = {"train": train, "val": val, "test": test}
        if labels_in_name:
            names = [c.strip() for c in labels_in_name.split(",") if c.strip()]
            ignore = comma_list(mask_ignore, "--mask-ignore", int, "4")
            made = manifest_from_named_labels(folder, out, names, masks=masks, mask_suffix=mask_suffix,
                                              mask_ignore=ignore, patient_regex=patient_regex, fractions=fractions,
                                              label_column=label_column, seed=seed, overwrite=overwrite,
                                              mask_colors=class_colours(mask_colors))
            over = [f"data.label_column={label_column}", "data.multi_label=true",
                    f"data.classes.names=[{','.join(names)}]", "data.classes.background=null"]
        else:
            if mask_colors:
                raise ValueError("--mask-colors only applies with --labels-in-name (labels read from masks); for "
                                 "evaluation set data.mask_colors in the config (histowsss init --mask-colors)")
            if mask_ignore:
                raise ValueError("--mask-ignore only applies with --labels-in-name (labels read from masks); for "
                                 "evaluation set data.mask_ignore_values in the config (histowsss init --mask-ignore)")
            made = manifest_from_folder(folder, out, masks=masks, mask_suffix=mask_suffix,
                                        patient_regex=patient_regex, fractions=fractions, label_column=label_column,
                                        seed=seed, overwrite=overwrite)
            over = [f"data.label_column={label_column}"]
        _print_stats(made.path, data_config_from(made.path, None, over))
    source = "split folders" if made.splits_from_folders else "a patient-grouped, class-stratified split made here"
    if made.splits_from_folders:  # (--train / --val / --test are not used then: a folder set without test says so)
        from histowsss.data.manifest_facts import split_role

        found = sorted({r["split"] for r in made.rows})
        if not any(split_role(k) == "test_splits" for k in found):
            console.print(f"[yellow]warning:[/] the split folders give only {escape(', '.join(found))}: no test split "
                          f"(--train / --val / --test apply without split folders); `histowsss data split {out} "
                          "--out OTHER.csv` draws a patient-grouped train / val / test split of these images",
                          highlight=False)
    console.print(f"{len(made.rows)} images, {len({patient_key(r['patient']) for r in made.rows})} patients; "
                  f"splits from {source}"
                  + (f"; {made.masks_found} masks" if masks is not None else ""), highlight=False)
    if masks and made.rows and not made.masks_found:  # a wrong --mask-suffix or folder finds nothing, silently
        from histowsss.data.folder_manifest import IMAGE_SUFFIXES as SUFFIXES
        from histowsss.data.io import image_stem

        example = image_stem(Path(made.rows[0]["image"]))
        there = next((f.name for m in masks if Path(m).is_dir() for f in sorted(Path(m).rglob("*"))
                      if f.suffix.lower() in SUFFIXES), None)
        console.print(f"[yellow]warning:[/] --masks given, but no mask matched an image: a mask is found by the "
                      f"image's file stem{' + --mask-suffix ' + repr(mask_suffix) if mask_suffix else ''} (image "
                      f"{escape(repr(example))} wants {escape(repr(example + (mask_suffix or '') + '.png'))} or "
                      "another image type)"
                      + (f"; the mask folder holds e.g. {escape(repr(there))}: check --mask-suffix (case matters)"
                         if there else "; the mask folder holds no image") + ". The manifest has no masks",
                      highlight=False)
    if made.empty_folders:
        console.print(f"[yellow]warning:[/] no image ({', '.join(IMAGE_SUFFIXES)}) in "
                      f"{escape(', '.join(made.empty_folders))}: left out of the manifest (whole-slide images are "
                      "cut into tiles with `histowsss data tiles`)", highlight=False)
    if not made.patients_from_regex:
        console.print("[yellow]warning:[/] no --patient-regex: every image is its own patient, so images of one "
                      "patient can land in different splits; pass a pattern that extracts the patient or slide id",
                      highlight=False)
    more = ""
    if labels_in_name:
        names = [c.strip() for c in labels_in_name.split(",") if c.strip()]
        ignored = comma_list(mask_ignore, "--mask-ignore", int, "4")
        if mask_colors:
            more = (f" --classes {shlex.quote(labels_in_name)} --background none --mask-colors "
                    f"{shlex.quote(mask_colors)}")
        elif len(ignored) == 1 and ignored[0] < len(names):  # a class position left out (QuPath's 0 = unannotated)
            values = ",".join(f"{n}={i}" for i, n in enumerate(names) if i != ignored[0])
            more = f" --background none --mask-values {shlex.quote(f'{values},ignore={ignored[0]}')}"
        else:
            more = (f" --classes {shlex.quote(labels_in_name)} --background none"
                    + (f" --mask-ignore {shlex.quote(str(mask_ignore))}" if mask_ignore else ""))
    # quoted for the shell, so the line can be pasted even where paths hold spaces
    console.print(f"next: histowsss init {escape(shlex.quote(str(made.path)))} --out my.yaml{escape(more)}",
                  highlight=False)


@app.command()
def synth(out: Path = typer.Argument(..., help="output folder"), size: int = 256, seed: int = 0,
          train: int = 24, val: int = 8, test: int = 16, overwrite: bool = False) -> None:
    """Generate the synthetic H&E dataset (benign: regular glands; malignant: crowded irregular glands)."""
    from histowsss.data.synthetic import generate_synthetic_dataset

    with clear_errors():
        path = generate_synthetic_dataset(out, {"train": train, "val": val, "test": test}, size=size, seed=seed,
                                          overwrite=overwrite)
    console.print(f"manifest: {escape(str(path))}")


@app.command()
def tiles(manifest: Path = typer.Argument(..., help="slide manifest: image (slide path), split, patient, labels"),
          out: Path = typer.Option(..., "--out", "-o", help="output folder (tiles/ and manifest.csv)"),
          tile: int = typer.Option(224, help="tile size in pixels at the target resolution"),
          stride: Optional[int] = typer.Option(None, help="step between tiles (default: the tile size)"),
          mpp: Optional[float] = typer.Option(None, min=1e-6, help="target microns per pixel (needs the slides' mpp metadata)"),
          downsample: Optional[float] = typer.Option(None, min=1e-6, help="level-0 pixels per tile pixel (instead of --mpp)"),
          min_tissue: float = typer.Option(0.5, help="keep tiles with more than this fraction of tissue"),
          max_tiles: Optional[int] = typer.Option(None, help="at most this many tiles per slide (seeded random)"),
          seed: int = 0,
          tissue_threshold: Optional[float] = typer.Option(None, help="HSV saturation cut for tissue (default: Otsu)"),
          backend: str = typer.Option("auto", help="auto (openslide, else tiffslide), openslide or tiffslide"),
          mask_classes: Optional[str] = typer.Option(
              None, help="comma-separated classes of tile mask values 0, 1, ... (needs an 'annotations' column of "
              "QuPath GeoJSON files)"),
          default_class: Optional[str] = typer.Option(None, help="class of annotations without a classification"),
          ignore_unknown: bool = typer.Option(False, help="skip annotations whose class is not in --mask-classes"),
          no_crop: bool = typer.Option(False, "--no-crop", help="the annotations are in the uncropped level-0 "
                                       "frame (QuPath opened the slide with --no-crop); default: QuPath's frame, "
                                       "cropped to openslide.bounds-* where the slide has them (.mrxs)"),
          overwrite: bool = False) -> None:
    """Cut whole-slide images into tiles + a manifest; every tile inherits its slide's labels, split and patient
    (and, with QuPath annotations, gets a class mask)."""
    from histowsss.slides.tiles import extract_tiles

    with clear_errors(), stop_on_interrupt("the tiles cut so far are kept and reused: run the same command again "
                                           "to go on", log_line):
        path = extract_tiles(manifest, out, tile=tile, stride=stride, mpp=mpp, downsample=downsample,
                             min_tissue=min_tissue, max_tiles=max_tiles, seed=seed, tissue_threshold=tissue_threshold,
                             backend=backend, overwrite=overwrite,
                             mask_classes=[c.strip() for c in mask_classes.split(",") if c.strip()] if mask_classes
                             else None, default_class=default_class, ignore_unknown=ignore_unknown,
                             no_crop=no_crop, log=log_line)
    console.print(f"manifest: {escape(str(path))}")
