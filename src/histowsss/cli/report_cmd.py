"""`histowsss report RUN_DIR`: one self-contained HTML report of a run folder (report.html)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from histowsss.cli.common import clear_errors, log_line


def report(run_dir: Path = typer.Argument(..., help="run folder"),
           out: Optional[Path] = typer.Option(None, "--out", "-o",
                                              help="output file (default RUN_DIR/report.html)"),
           overwrite: bool = typer.Option(False, help="replace an existing --out file that is not a report (an "
                                                      "earlier report is always replaced)")) -> None:
    """Write a self-contained HTML report: data, curves, per-stage quality, examples, timings."""
    from histowsss.engine.run_paths import run_folder_paths
    from histowsss.evaluation.report import write_report

    with clear_errors(), run_folder_paths(run_dir, out, log=log_line) as (run_dir, out):
        path = write_report(run_dir, out, overwrite=overwrite)
    log_line(f"report: {path}")
