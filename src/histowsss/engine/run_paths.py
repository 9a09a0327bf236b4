"""Where the relative paths of a run folder's config.yaml are read from.

A config's relative paths (``data.manifest``, ``data.root``, ``points.file``, a local ``backbone.weights`` or
``train_seg.encoder_weights``, ``train_seg.label_dir``) are read from the current folder, as the user wrote them;
config.yaml keeps them as written, so the step hashes do not change when a whole project folder moves. Each
``histowsss run`` also records the folder it was started in and the run folder (``invocation.json``), so that the
commands that read a run folder (report, predict, export, tune, or ``run RUN/config.yaml``) started from anywhere
else, e.g. inside the run folder, read those paths from there, or from the project the run folder was moved or
copied with since, with a line that says so.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from histowsss.engine.atomic import write_json

INVOCATION = "invocation.json"


def record_invocation(run_path: Path, cfg=None) -> None:
    """Write ``invocation.json``: the folder this command was started in, the run folder (both absolute) and the
    command's arguments; unless ``cfg``'s relative paths are not all found from this folder and the folder the file
    names finds as many of them or more (it stays recorded, with a warning: a run started from the wrong folder,
    whose steps had nothing to do, would otherwise lose where its data is; a project moved on purpose with one
    path broken is recorded where it is now)."""
    rel = relative_paths(cfg) if cfg is not None else {}
    missing = [f"{k} ({v})" for k, v in rel.items() if not Path(v).expanduser().exists()]
    before = recorded_working_folder(run_path) if missing else None
    if before is not None and os.path.abspath(before) != os.getcwd() and sum(
            (before / Path(v).expanduser()).exists() for v in rel.values()) >= len(rel) - len(missing):
        import warnings

        warnings.warn(f"{', '.join(missing)}: not found from {os.getcwd()}; {run_path / INVOCATION} keeps the folder "
                      f"relative paths were read from ({before}). Start from the folder they are relative to, or move "
                      "the run folder with its project", UserWarning, stacklevel=2)
        return
    write_json(run_path / INVOCATION, {"working_folder": os.getcwd(), "run_folder": os.path.abspath(run_path),
                                       "argv": list(sys.argv)})


def _moved_project(run_path: Path, base: Path) -> Path | None:
    """Where the project the run was started in is now, when the run folder was moved or copied with it: the
    recorded run folder's place below the recorded working folder (``runs/x``, say) taken off the run folder's
    path now; None when the run folder did not move, was not below that folder, or is not at such a place now."""
    try:
        then = json.loads((Path(run_path) / INVOCATION).read_text()).get("run_folder")
    except (OSError, ValueError, AttributeError):
        return None
    now = Path(os.path.abspath(run_path))
    if not isinstance(then, str) or Path(then) == now:
        return None
    below = Path(os.path.relpath(then, base))
    if below.parts[:1] == ("..",) or str(below) == ".":
        return None
    if now.parts[-len(below.parts):] != below.parts:
        return None
    return Path(*now.parts[:-len(below.parts)])


def recorded_working_folder(run_path: Path) -> Path | None:
    """The folder the run's last ``histowsss run`` was started in; None when not recorded (older runs, exports)."""
    try:
        folder = json.loads((Path(run_path) / INVOCATION).read_text()).get("working_folder")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(folder) if isinstance(folder, str) and folder else None


def relative_paths(cfg) -> dict[str, str]:
    """The config keys that hold a relative file or folder path, and the path."""
    values = {"data.manifest": cfg.data.manifest, "data.root": cfg.data.root, "points.file": cfg.points.file,
              "backbone.weights": cfg.backbone.weights, "train_seg.encoder_weights": cfg.train_seg.encoder_weights,
              "train_seg.label_dir": cfg.train_seg.label_dir}
    out = {}
    for key, v in values.items():
        if v is None or (key.endswith("weights") and str(v) in ("imagenet", "none")):
            continue
        p = Path(str(v)).expanduser()
        if not p.is_absolute():
            out[key] = str(v)
    return out


def paths_base(cfg, run_path: Path) -> Path | None:
    """The folder to read ``cfg``'s relative paths from when it is not the current one, when some of those paths
    are missing here: the folder the run was started in, or, when the run folder was moved or copied with its
    project since, that project's folder now (:func:`_moved_project`: a copied project reads its own data, not the
    original's), when all of them are there; None otherwise (the paths are read from here, and a missing one is
    named by the step that reads it)."""
    rel = relative_paths(cfg)
    if not rel or all(Path(v).expanduser().exists() for v in rel.values()):
        return None
    base = recorded_working_folder(run_path)
    if base is None:
        return None
    here = Path.cwd().resolve()
    for cand in (_moved_project(run_path, base), base):
        if (cand is not None and cand.is_dir() and cand.resolve() != here
                and all((cand / Path(v).expanduser()).exists() for v in rel.values())):
            return cand
    return None


def run_config_base(run_path: Path, cfg=None, config_file: Path | None = None,
                    log: Callable[[str], None] | None = None) -> Path | None:
    """:func:`paths_base` for the run folder ``run_path`` and ``cfg`` (default: read from ``config_file``, default
    the folder's config.yaml), saying which paths are read from where through ``log``; None also when the config
    cannot be read (the command then says why)."""
    from histowsss.config import ConfigError, load_config

    config_file = Path(run_path) / "config.yaml" if config_file is None else Path(config_file)
    if cfg is None:
        if not config_file.is_file():
            return None
        try:
            cfg = load_config(config_file)
        except (ConfigError, OSError, ValueError):
            return None
    base = paths_base(cfg, run_path)
    if base is not None and log is not None:
        keys = ", ".join(relative_paths(cfg))
        started = recorded_working_folder(run_path)
        where = ("the folder the run was started in" if started is not None and started.resolve() ==
                 base.resolve() else f"the project this run folder was moved or copied with (it was started in "
                 f"{started})")
        log(f"{config_file}: relative paths ({keys}) read from {base}, {where}")
    return base


@contextmanager
def working_folder(base: Path | None) -> Iterator[None]:
    """Run the block with ``base`` as the current folder (None: stay), and come back after it."""
    if base is None:
        yield
        return
    here = os.getcwd()
    os.chdir(base)
    try:
        yield
    finally:
        os.chdir(here)


@contextmanager
def run_folder_paths(run_path: Path, *paths: Path | None, cfg=None, config_file: Path | None = None,
                     log: Callable[[str], None] | None = None) -> Iterator[tuple]:
    """For a command that reads the run folder ``run_path``: when its config's relative paths are read from another
    folder (:func:`run_config_base`: where the run was started, or its moved project), run the block there, with
    ``run_path`` and ``paths`` (the command's own path arguments) made absolute first; yields (run_path, *paths) as
    the block must use them."""
    base = run_config_base(run_path, cfg, config_file=config_file, log=log)
    if base is not None:
        run_path, paths = absolute(run_path), tuple(absolute(p) for p in paths)
    with working_folder(base):
        yield (run_path, *paths)


def absolute(path: Path | None) -> Path | None:
    """``path`` made absolute from the current folder (before :func:`working_folder` moves away from it)."""
    return None if path is None else Path(os.path.abspath(Path(path).expanduser()))
