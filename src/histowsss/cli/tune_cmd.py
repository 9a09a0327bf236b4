"""`histowsss tune RUN_DIR`: choose segmentation settings by patient cross-validation of the training images."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from histowsss.cli.common import clear_errors, comma_list, console, log_line, stop_on_interrupt


def _num(v: float | None) -> str:
    """A score for the table; "-" where there is none (a class neither in the masks nor predicted)."""
    return "-" if v is None else f"{v:.2f}"


def tune(run_dir: Path = typer.Argument(..., help="run folder whose weak labels are made (histowsss run ... --to "
                                                   "eval_sem_seg)"),
         candidate: Optional[list[str]] = typer.Option(
             None, "--candidate", "-c",
             help="';'-separated config overrides of one candidate, e.g. \"train_seg.members=1;train_seg.epochs=10\" "
                  "(repeat; none: the run's own configuration)"),
         folds: int = typer.Option(4, help="patient folds (each training patient is held out once)"),
         gate_cuts: Optional[str] = typer.Option(
             None, help="also score the CAM classifier's image gate at these class-presence cuts, e.g. 0.5,0.2,0.05"),
         holdout_classifier: bool = typer.Option(
             False, help="gate each fold with a CAM stage trained without its patients (honest, one CAM training "
                         "per fold)"),
         criterion: str = typer.Option("miou", help="miou, or iou_<class> (e.g. iou_malignant)"),
         name: str = typer.Option("crossval", help="result name: RUN_DIR/tuning/<name>.json"),
         object_areas: Optional[str] = typer.Option(
             None, help="also choose eval_seg's object clean-up: min_object_area values to try, e.g. 0,200,800 "
                        "(pixels; with the manifest's instance masks, chosen by the GlaS rank sum of object F1, Dice "
                        "and Hausdorff on the chosen candidate's out-of-fold predictions)"),
         hole_areas: Optional[str] = typer.Option(None, help="max_hole_area values to try with --object-areas "
                                                              "(default 0)"),
         split_h: Optional[str] = typer.Option(None, "--split-h", help="split_h values (touching objects) to try "
                                                                       "with --object-areas (default 0)"),
         keep_work: bool = typer.Option(False, help="keep the scratch folders (held-out CAM stages) after success"),
         overwrite: bool = typer.Option(False, help="replace a finished result of the same name"),
         seed: int = typer.Option(0, help="seed of the patient-to-fold assignment")) -> None:
    """Cross-validate segmentation settings on the training patients; test images are never read.

    Each candidate trains K networks (one per held-out fold, on the weak labels of the other folds) and every
    training image is scored once against its mask. Prints the pooled table and the overrides of the best choice.
    A killed call resumes: finished (fold, candidate) pairs are kept under RUN_DIR/tuning/<name>/ (with
    --keep-work, a later call re-scores other gate cuts there without training).
    """
    from rich.markup import escape
    from rich.table import Table

    from histowsss.engine.run_paths import run_folder_paths

    with clear_errors():
        with run_folder_paths(run_dir, log=log_line) as (run_dir,):
            res = _tune(run_dir, candidate, folds, gate_cuts, holdout_classifier, criterion, name, object_areas,
                        hole_areas, split_h, keep_work, overwrite, seed)
    out = run_dir / "tuning" / f"{name}.json"
    crit = res["criterion"]
    table = Table(title=f"{folds}-fold patient cross-validation, {res['training_images']} training images "
                        f"({res['training_patients']} patients), {crit} pooled over the folds")
    table.add_column("candidate", overflow="fold")  # folded, not cut: candidates often differ only at the end
    table.add_column("variant", overflow="fold")
    table.add_column(crit, justify="right")
    table.add_column(f"fold mean {crit}", justify="right")
    for row in res["pooled"]:
        for vk, v in row.items():
            if isinstance(v, dict):
                best = row["candidate"] == res["chosen"]["index"] and vk == res["chosen"]["variant"]
                table.add_row(escape(row["overrides"] or "(run config)"), vk, _num(v[crit]) + (" *" if best else ""),
                              _num(v["fold_mean_" + crit]))
    console.print(table)
    console.print(f"weak labels themselves: {crit} {_num(res['weak_labels_pooled'][crit])}")
    sets = " ".join(f"--set {o}" for o in res["chosen"]["overrides"]) or "(no overrides: the run configuration)"
    for line in choice_notes(res):
        log_line(line)
    console.print(f"chosen: {sets}", markup=False, highlight=False)
    if res["chosen"]["candidate"]:
        console.print("(leave out overrides given only to save time, e.g. train_seg.members=1)", markup=False,
                      highlight=False)
    if res.get("cleanup"):
        cl = res["cleanup"]
        t2 = Table(title="object clean-up on the out-of-fold predictions (GlaS object metrics)")
        for col in ("min_object_area", "max_hole_area", "split_h", "mIoU", "object F1", "object Dice", "Hausdorff",
                    "rank sum"):
            t2.add_column(col, justify="right")
        for r in cl["rows"]:
            o = r["objects"] or {}
            keys = ("min_object_area", "max_hole_area", "split_h")
            best = all(r[k] == cl["chosen"][k] for k in keys)
            t2.add_row(*(str(r[k]) for k in keys), _num(r["miou"]), str(o.get("f1")),
                       str(o.get("dice")), str(o.get("hausdorff")),
                       str(r.get("rank_sum", "-")) + (" *" if best else ""))
        console.print(t2)
        console.print("chosen clean-up: " + " ".join(f"--set {o}" for o in cl["overrides"]), markup=False,
                      highlight=False)
    log_line(f"result: {out}")


def choice_notes(res: dict) -> list[str]:
    """What the choice of a cross-validation result rests on, where a reader of the console alone would miss it:
    how few images were scored (those with a mask), and a gate judged by the run's own classifier."""
    out = []
    scored, total = res.get("scored_images"), res["training_images"]
    if scored is not None and scored < total:
        unscored = sum(1 for f in res.get("per_fold", []) if not f.get("val_images"))
        out.append(f"note: scored on {scored} of the {total} training images (those with a mask)"
                   + (f"; {unscored} fold(s) held none" if unscored else "")
                   + (": a choice on so few is noise, give masks for more patients" if scored < 20 else ""))
    if res.get("gate_cuts") and not res.get("holdout_classifier") and res["chosen"]["variant"] != "network":
        out.append("note: the gate was judged with the run's own CAM classifier, which saw every training image: "
                   "optimistic; --holdout-classifier trains one per fold that never saw its images")
    return out


def _tune(run_dir: Path, candidate: list[str] | None, folds: int, gate_cuts: str | None, holdout_classifier: bool,
          criterion: str, name: str, object_areas: str | None, hole_areas: str | None, split_h: str | None,
          keep_work: bool, overwrite: bool, seed: int) -> dict:
    """The cross-validation of :func:`tune` (and the clean-up choice), written to RUN_DIR/tuning/<name>.json."""
    from histowsss.engine.atomic import write_json
    from histowsss.engine.ranks import env_world
    from histowsss.tuning.cleanup import cleanup_from_crossval
    from histowsss.tuning.crossval import crossval

    if env_world()[1] > 1:  # every process would predict the folds and write the same files
        raise RuntimeError(f"tune runs in one process, not under torchrun (WORLD_SIZE={env_world()[1]}): every "
                           f"process would score the folds and write {run_dir / 'tuning'}; run `histowsss tune` "
                           "without torchrun (on a GPU machine it uses the first GPU)")
    from histowsss.export.model_bundle import MODEL_CARD

    if (run_dir / MODEL_CARD).is_file():  # an export holds the network, not the weak labels tune trains on
        raise ValueError(f"{run_dir}: an exported model (histowsss export), not a run folder: tune the run folder it "
                         "was exported from")
    out = run_dir / "tuning" / f"{name}.json"
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (a finished cross-validation); pass --overwrite to redo it or "
                              "--name to keep both")
    work = run_dir / "tuning" / name
    cuts = comma_list(gate_cuts, "--gate-cuts", float, "0.5,0.3,0.1")
    areas = comma_list(object_areas, "--object-areas", int, "0,200,800")
    holes = comma_list(hole_areas, "--hole-areas", int, "0,200") or [0]
    splits = comma_list(split_h, "--split-h", float, "0,3,6") or [0.0]
    if (hole_areas or split_h) and not areas:
        raise ValueError("--hole-areas and --split-h need --object-areas (give 0 to leave small objects alone)")
    if areas:  # before any training: the clean-up needs instance masks to rank
        from histowsss.cli.predict_cmd import load_run_config
        from histowsss.tuning.cleanup import require_instance_masks

        if (any(holes) or any(splits)) and load_run_config(run_dir).data.classes.background is None:
            raise ValueError("--hole-areas and --split-h need a background class (holes are background, touching "
                             "objects are cut apart by it); with data.classes.background null give "
                             "--object-areas alone")
        require_instance_masks(run_dir)
    from histowsss.engine.run_dir import run_lock

    with run_lock(run_dir, "histowsss tune", create=False):
        with stop_on_interrupt(f"finished folds are kept in {work}; run the same command again to go on",
                               log_line):
            res = crossval(run_dir, candidate or [], work, folds=folds, gate_cuts=cuts,
                           holdout_classifier=holdout_classifier, criterion=criterion, seed=seed, log=log_line)
            if areas:
                res["cleanup"] = cleanup_from_crossval(run_dir, res, work, areas, holes, splits, log=log_line)
        write_json(out, res)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return res
