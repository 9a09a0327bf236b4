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
    from histowsss.engine.run_paths import absolute, run_config_base, working_folder
    from histowsss.evaluation.report import write_report

    with clear_errors():
        base = run_config_base(run_dir, log=log_line)
        if base is not None:
            run_dir, out = absolute(run_dir), absolute(out)
        with working_folder(base):
            path = write_report(run_dir, out, overwrite=overwrite)
    log_line(f"report: {path}")
