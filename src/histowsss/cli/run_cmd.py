"""`histowsss run CONFIG`: run pipeline steps in order, skipping finished ones; `histowsss steps`."""

from __future__ import annotations

import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

from histowsss.cli.common import clear_errors, default_run_dir, get_config, log_line, stop_on_interrupt


def run(config: str = typer.Argument(..., help="YAML config path or builtin name (demo, glas-gland[-gpu], glas-malignant[-gpu])"),
        run_dir: Optional[Path] = typer.Option(None, "--run", "-r", help="run folder (default runs/<name>)"),
        start: Optional[str] = typer.Option(None, "--from", help="first step"),
        stop: Optional[str] = typer.Option(None, "--to", help="last step"),
        overwrite: bool = typer.Option(False, help="redo finished steps"),
        set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="override, e.g. train_cam.epochs=3"),
        dry_run: bool = typer.Option(False, "--dry-run", help="say which steps would run, be skipped or be made "
                                     "again, and why, after the checks made before any step; write nothing")) -> None:
    """Run the pipeline (or steps --from .. --to) into a run folder; finished steps are skipped."""
    from histowsss.engine.ranks import is_main_process
    from histowsss.engine.run_paths import INVOCATION, run_folder_paths

    # under torchrun only rank 0 reports (the others run the same steps; their errors still print)
    log = log_line if is_main_process() else (lambda msg: None)
    with clear_errors(), runnable_commands(config, set_):
        cfg = get_config(config, set_)
        path = Path(config)
        # a run folder's config.yaml, or one of the configs it ran with (config_history/<sha>.yaml, to go back)
        folder = path.parent.parent if path.parent.name == "config_history" else path.parent
        in_run_folder = path.is_file() and (folder / INVOCATION).is_file()
        # ... runs in that folder (not in ./runs/<name>) unless --run says otherwise
        run_path = folder if in_run_folder and run_dir is None else default_run_dir(cfg, run_dir)
        if in_run_folder:
            # its relative paths are read from where that run was started
            with run_folder_paths(folder, run_path, cfg=cfg, config_file=path, log=log) as (_, run_path):
                _run(cfg, run_path, start, stop, overwrite, dry_run, log)
        else:
            _run(cfg, run_path, start, stop, overwrite, dry_run, log)


@contextmanager
def runnable_commands(config: str, set_: list[str] | None) -> Iterator[None]:
    """The commands a StepError suggests (`histowsss run CONFIG ...`) given with this command's config and its
    ``--set`` values, so that they run with the same settings when copied."""
    from histowsss.engine.run_dir import StepError

    try:
        yield
    except StepError as e:
        text = str(e)
        if "histowsss run CONFIG" not in text:
            raise
        given = " ".join([shlex.quote(config), *(f"--set {shlex.quote(v)}" for v in set_ or [])])
        raise StepError(text.replace("histowsss run CONFIG", f"histowsss run {given}")) from None


def _run(cfg, run_path: Path, start: str | None, stop: str | None, overwrite: bool, dry_run: bool, log) -> None:
    """Plan, then run (or with ``dry_run`` only describe) the steps of ``cfg`` in ``run_path``."""
    from histowsss.engine.earlier_records import with_kept
    from histowsss.engine.pipeline import plan_steps, run_pipeline
    from histowsss.engine.run_dir import RunDir, StepError, require_folder, run_lock

    require_folder(run_path)  # (a file given as --run: said before what the plan finds)
    rd = RunDir(run_path, cfg)
    plan_steps(cfg, with_kept(cfg, rd), start, stop, overwrite)  # a refused command leaves config.yaml as it was
    if dry_run:
        log(f"run folder: {rd.path}" + ("" if rd.path.exists() else " (not made yet)"))
        try:
            with run_lock(rd.path, "histowsss run --dry-run", create=False, look_only=True):
                pass
        except StepError as e:  # (a dry run writes nothing: it may look, but should say what it sees)
            log(f"note: {str(e).split(';')[0]}; what follows is the folder as it is now, in the middle of that")
        run_pipeline(cfg, rd, start, stop, overwrite=overwrite, log=log, dry_run=True)
        return
    with run_lock(rd.path, "histowsss run"):
        rd.init()
        log(f"run folder: {rd.path}")
        # SIGTERM (a scheduler's pre-emption) ends the step as Ctrl-C does
        with stop_on_interrupt("finished steps and the last checkpoint of the running one are kept; run the "
                               "same command again to go on (without --overwrite, which would start the steps "
                               "over)", log):
            run_pipeline(cfg, rd, start, stop, overwrite=overwrite, log=log)
    from histowsss.cli.demo_cmd import stage_table
    from histowsss.engine.standing import metrics_standing

    # what the run has measured so far (its metrics/), as the demo ends; numbers of other settings marked
    table = stage_table(rd.path, metrics_standing(cfg, rd.path))
    if table != "(no metrics yet)":
        log("quality measured in this run folder (percent; `histowsss report " + str(rd.path) + "` for the whole "
            "report):\n" + table)


def steps() -> None:
    """List the pipeline steps in order."""
    from histowsss.steps.registry import PIPELINE

    for i, s in enumerate(PIPELINE, 1):
        print(f"{i}. {s}")
