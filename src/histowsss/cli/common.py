"""Shared CLI helpers: loading configs with overrides, turning known errors into clear exits."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console

from histowsss.config import ConfigError, RunConfig, load_config

console = Console(stderr=True)

KNOWN_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, FileExistsError, KeyError, ValueError,
                                                 RuntimeError)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Print known errors as one clear message and exit with code 2 (no traceback)."""
    try:
        yield
    except typer.Exit:
        raise
    except KNOWN_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        console.print(f"[bold red]error:[/] {type(e).__name__}: {msg}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def get_config(config: str, overrides: list[str] | None) -> RunConfig:
    return load_config(config, overrides or [])


def default_run_dir(cfg: RunConfig, run: Path | None) -> Path:
    return run if run is not None else Path("runs") / cfg.name


def data_config_from(manifest: Path, config: str | None, overrides: list[str] | None):
    """A DataConfig for data commands: from a config file (its data section), with the manifest replaced."""
    from histowsss.config import DataConfig

    if config is not None:
        cfg = load_config(config, overrides)
        return cfg.data.model_copy(update={"manifest": manifest})
    # no config: infer classes from the manifest's label column
    import csv

    with open(manifest, newline="") as f:
        r = csv.DictReader(f)
        cols = r.fieldnames or []
        rows = list(r)
    col = "label" if "label" in cols else None
    if col is None:
        raise ConfigError(f"{manifest}: no 'label' column; pass --config with data.label_column and classes")
    names = sorted({v.strip() for row in rows for v in row[col].split(";") if v.strip()})
    if len(names) < 2:
        names = names + ["other"]
    return DataConfig(manifest=manifest, label_column=col, multi_label=any(";" in row[col] for row in rows),
                      classes={"names": names}, mask_column="mask" if "mask" in cols else None)


def exit_code(ok: bool) -> None:
    if not ok:
        sys.exit(1)
