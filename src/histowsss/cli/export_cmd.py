"""`histowsss export RUN_DIR --out MODEL_DIR`: the trained network as a small folder that `predict --run` reads."""

from __future__ import annotations

from pathlib import Path

import typer

from histowsss.cli.common import clear_errors, log_line, stop_on_interrupt


def export(run_dir: Path = typer.Argument(..., help="run folder with a trained segmentation network"),
           out: Path = typer.Option(..., "--out", "-o", help="folder to write the model into"),
           supervised: bool = typer.Option(False, help="export the supervised upper-bound network (seg_supervised)"),
           overwrite: bool = typer.Option(False, help="replace an existing folder at --out")) -> None:
    """Export a run's network (checkpoints, config, classifier for the image gate) with a model card, to share it:
    `histowsss predict --run MODEL_DIR ...` works as with the run folder."""
    from histowsss.engine.run_paths import run_folder_paths
    from histowsss.export.model_bundle import MODEL_CARD, export_model

    gone = "nothing was exported (the partial copy is removed); run the command again"
    with stop_on_interrupt(gone, log=log_line), clear_errors(), \
            run_folder_paths(run_dir, out, log=log_line) as (run_dir, out):
        path = export_model(run_dir, out, "seg_supervised" if supervised else "seg", overwrite=overwrite,
                            log=log_line)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    log_line(f"model: {path} ({size / 1e6:.1f} MB; {MODEL_CARD}, MODEL.md)")
