"""Shared CLI helpers: loading configs with overrides, turning known errors into clear exits."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape

from histowsss.config import ConfigError, RunConfig, load_config
from histowsss.ops.crf import CrfUnavailable

console = Console(stderr=True)


def log_line(message: str) -> None:
    """Print a progress line as it is: no rich markup ("[skip] step" must not be read as a style tag), not wrapped
    at the console's width (a log file's 80 columns would break tables and commands meant to be copied)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


# OSError: files that cannot be written or read (permissions, a full disk), named by the message; CrfUnavailable: the
# optional CRF extra is missing, and its message says how to install it
KNOWN_ERRORS: tuple[type[BaseException], ...] = (ConfigError, OSError, KeyError, ValueError, RuntimeError,
                                                 CrfUnavailable)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Print known errors as one clear message and exit with code 2 (no traceback)."""
    try:
        yield
    except typer.Exit:
        raise
    except KNOWN_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        console.print(f"[bold red]error:[/] {type(e).__name__}: {escape(str(msg))}", markup=True, highlight=False,
                      soft_wrap=True)
        raise typer.Exit(2) from None


def get_config(config: str, overrides: list[str] | None) -> RunConfig:
    return load_config(config, overrides or [])


def default_run_dir(cfg: RunConfig, run: Path | None) -> Path:
    return run if run is not None else Path("runs") / cfg.name


def data_config_from(manifest: Path, config: str | None, overrides: list[str] | None,
                     log: Callable[[str], None] | None = None):
    """A DataConfig for data commands: from a config file (its data section), with the manifest replaced.

    Without a config, the classes are inferred from the manifest's label column ('label', or the column named
    by ``--set data.label_column=COL``), or from one 0/1 column per class (``--set data.label_columns=[A,B]``, or
    found: :func:`~histowsss.data.manifest.class_columns_of`, which ``log`` is told), and the splits by their names as
    ``init`` reads them (train*, val* / dev*, test*); other ``data.*`` overrides apply on top.
    """
    from histowsss.config import DataConfig, apply_overrides

    if config is not None:
        cfg = load_config(config, overrides)
        return cfg.data.model_copy(update={"manifest": manifest})
    over: dict = apply_overrides({}, overrides or [])
    other = sorted(k for k in over if k != "data")
    if other:
        raise ConfigError(f"without --config only data.* overrides apply (got {', '.join(other)}); "
                          "pass --config for the other sections")
    data_over = over.get("data", {})
    if not isinstance(data_over, dict):
        raise ConfigError("'data' is a section; override its keys, e.g. --set data.label_column=grade")
    from histowsss.data.manifest import class_columns_of, read_csv_rows

    lines: list[int] = []  # (each row's line, for messages that name rows)
    cols, rows = read_csv_rows(Path(manifest), lines=lines)
    if not rows:
        raise ValueError(f"{manifest}: the manifest has a header but no rows; add one row per image (or make the "
                         "manifest with `histowsss data manifest FOLDER`)")
    col = data_over.get("label_column", "label" if "label" in cols and not data_over.get("label_columns") else None)
    raw: dict = {"manifest": manifest, "label_column": col,
                 "mask_column": "mask" if "mask" in cols else None,
                 **({"points_column": "points"} if "points" in cols else {})}  # clicks checked as init takes them
    if col is not None:
        if col not in cols:
            raise ConfigError(f"{manifest}: no {col!r} column (columns: {', '.join(cols)}); pass "
                              "--set data.label_column=COLUMN, or --config with data.label_column and classes")
        from histowsss.data.manifest_facts import label_separator_of

        sep = data_over.get("label_separator") or label_separator_of(rows, col)  # as `init` finds it
        if sep != ";":
            raw["label_separator"] = sep
        multi = data_over.get("multi_label", any(sep in row[col] for row in rows))
        values = [row[col].split(sep) if multi else [row[col]] for row in rows]
        from histowsss.data.manifest import is_missing

        names = sorted({v.strip() for vs in values for v in vs if not is_missing(v)})  # 'NaN': a missing label
        from histowsss.data.manifest_facts import class_name_twins, code_names_column

        named = None if "label_column" in data_over or multi else code_names_column(cols, rows, col, names)
        if named is not None:  # integer codes named one for one by another column: its names, as `init` takes
            if log is not None:
                log(f"classes from column {named!r}, the names of {col!r}'s codes (--set data.label_column={col} "
                    "keeps the codes)")
            col = raw["label_column"] = named
            names = sorted({row[col].strip() for row in rows if row[col].strip()})
        twins = class_name_twins(names)
        if twins:  # as `init` refuses them: each would be a class of its own
            raise ConfigError(f"{manifest}: column {col!r} holds class names that differ only in case or spaces ("
                              + "; ".join(" / ".join(map(repr, v)) for v in twins) + "): fix the labels (typos?) so "
                              "each class is written one way")
        if len(names) < 2:
            names = names + ["other"]
        raw.update(multi_label=multi, classes={"names": names})
    elif data_over.get("label_columns") or ("label_column" not in data_over and class_columns_of(cols, rows)):
        from histowsss.data.manifest import class_columns_labels

        given = data_over.get("label_columns")
        class_cols = ([c.strip() for c in given.split(",") if c.strip()] if isinstance(given, str)
                      else list(given or class_columns_of(cols, rows)))
        if not given and log is not None:  # two 0/1 flag columns look the same as class columns: say what was taken
            log(f"labels from the 0/1 columns {', '.join(class_cols)} (found: no 'label' column); if another "
                "column holds the class names, pass --set data.label_column=COLUMN")
        from histowsss.data.manifest_facts import BACKGROUND_NAMES

        marked = [class_columns_labels(row, [c for c in class_cols if c in cols])[0] for row in rows]
        names, bg = list(class_cols), None
        if any(not m for m in marked):  # rows that mark no class: the background class, as `init` takes it
            named = [c for c in class_cols if c.lower() in BACKGROUND_NAMES]
            bg = named[0] if len(named) == 1 else "unmarked"
            if bg not in names:
                names = [bg] + names
                if log is not None:
                    log(f"{sum(not m for m in marked)} row(s) mark none of the class columns: counted as "
                        "'unmarked' (the background class; `histowsss init --background NAME` names it)")
        raw.update(label_columns=class_cols, multi_label=data_over.get("multi_label", any(len(m) > 1 for m in marked)),
                   classes={"names": names, **({"background": bg} if bg is not None else {})})
    elif "classes" not in data_over:
        from histowsss.data.manifest import almost_class_columns

        same = [c for c in cols if c.lower() == "label"]
        raise ConfigError(f"{manifest}: no 'label' column{almost_class_columns(cols, rows, lines)}; "
                          + (f"rename column {same[0]!r} to 'label', or " if same else "")
                          + "pass --set data.label_column=COLUMN, --set data.label_columns=[CLASS1,CLASS2,...] (one "
                          "0/1 column per class), or --config with data.label_column and classes")
    from histowsss.data.manifest_facts import split_role

    for v in dict.fromkeys(r.get("split", "").strip() for r in rows):  # the splits by name, as `init` reads them
        role = split_role(v) if v else None
        if role is not None:
            raw.setdefault(role, []).append(v)
    raw.update({k: v for k, v in data_over.items() if k not in ("classes", "manifest")})
    if "classes" in data_over:
        raw["classes"] = {**raw.get("classes", {}), **data_over["classes"]}
    from pydantic import ValidationError

    try:
        return DataConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"'{'.'.join(['data'] + [str(p) for p in err['loc']])}': {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{manifest}: invalid data settings:\n  " + "\n  ".join(lines)) from None


def plain_warnings() -> None:
    """Show Python warnings as one ``warning: message`` line on stderr, each text once per process (an image read by
    two steps of a command warns once), instead of Python's two lines with the source line that warned. Installed by
    the console script (:func:`histowsss.cli.app.main`), not by library calls."""
    import warnings

    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # warnings.showwarning's signature
        text = str(message)
        if text in seen:
            return
        seen.add(text)
        kind = "" if issubclass(category, UserWarning) and category.__module__.startswith(("histowsss", "builtins")) \
            else f"{category.__name__}: "
        console.print(f"[yellow]warning:[/] {escape(kind + text)}", highlight=False, soft_wrap=True)

    warnings.showwarning = show


def check_out_file(out: Path, overwrite: bool, reads: tuple[Path, ...] = (), example: str = "out.csv") -> None:
    """Refuse an output file path before any work: a folder (``--out`` names the file to write, e.g.
    ``example`` in it), a file the command reads (``init M.csv --out M.csv`` would replace the manifest), or an
    existing file without ``--overwrite``."""
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder; --out names the file to write (e.g. {out / example})")
    for src in reads:
        if out.exists() and Path(src).exists() and out.resolve() == Path(src).resolve():
            raise ValueError(f"--out {out} is the file this command reads ({src}); writing it would replace it: "
                             "choose another name")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")


def comma_list(text: str | None, option: str, kind: type = float, example: str = "0.5,0.3") -> list:
    """``"a,b,c"`` -> ``[kind(a), kind(b), kind(c)]`` (empty or None -> []); a ValueError naming ``option``."""
    if not text:
        return []
    try:
        return [kind(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"{option} {text!r}: give comma-separated {kind.__name__}s, e.g. {example}") from None


def exit_code(ok: bool) -> None:
    if not ok:
        sys.exit(1)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler pre-empting the job, ``timeout``, ``kill``), raised in the main thread as Ctrl-C is, so
    that a step records its failure and time and temporary files are cleaned up as after Ctrl-C."""


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (a KeyboardInterrupt); the old handler is restored after.
    Exit code 143 (128 + SIGTERM) is the caller's to give."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise Terminated("SIGTERM (exit 143)")  # (the text a failed step's status record keeps)

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def interrupt_exit_code(e: KeyboardInterrupt) -> int:
    """130 after Ctrl-C, 143 after SIGTERM (the shell's 128 + signal number)."""
    return 143 if isinstance(e, Terminated) else 130


@contextmanager
def stop_on_interrupt(how_to_go_on: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Run the block with SIGTERM raised as Ctrl-C is (:func:`terminate_as_interrupt`); either ends the command with
    'interrupted' / 'terminated: ' + ``how_to_go_on`` and exit code 130 / 143."""
    try:
        with terminate_as_interrupt():
            yield
    except KeyboardInterrupt as e:
        code = interrupt_exit_code(e)
        log(f"{'terminated' if code == 143 else 'interrupted'}: {how_to_go_on}")
        raise typer.Exit(code) from None


def class_colours(text: str | None) -> dict[str, str | list[str]] | None:
    """``'tumour=#ff0000,ignore=#ffffff'`` -> {'tumour': '#ff0000', 'ignore': '#ffffff'}; a class named twice gets
    the list of its colours (merged into it)."""
    if not text:
        return None
    out: dict[str, list[str]] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, colour = part.rpartition("=")
        if not sep or not name.strip():
            raise ValueError(f"{part!r}: give CLASS=#rrggbb for --mask-colors (e.g. tumour=#ff0000), CLASS=VALUE for "
                             "--mask-values (e.g. tumour=1)")
        out.setdefault(name.strip(), []).append(colour.strip())
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


def class_values(text: str | None) -> dict[str, int | list[int]] | None:
    """``'tumour=1,stroma=2,ignore=0'`` -> {'tumour': 1, 'stroma': 2, 'ignore': 0}; ``'ignore=0,ignore=7'`` gives
    'ignore' the list [0, 7]."""
    out = class_colours(text)
    if out is None:
        return None
    try:
        return {k: [int(x) for x in v] if isinstance(v, list) else int(v) for k, v in out.items()}
    except ValueError:
        raise ValueError(f"--mask-values {text!r}: give CLASS=VALUE with whole numbers, e.g. "
                         "tumour=1,ignore=0") from None
