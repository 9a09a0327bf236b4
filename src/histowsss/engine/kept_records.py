"""Finished step records kept across other settings.

When a step runs again with other settings, its finished record is kept (``status/kept/<step>.<hash>/``: the record,
the list of its output files, a copy of its logs). If that run stops before the step rewrote its outputs (a training
step writes its network at the end), going back to the settings of before restores the record instead of making the
step and every later one again, but only while every output file it listed is there unchanged: the files its step
declared (``outputs``: files, and every file under a declared folder, symbolic links followed; a declared folder must
hold the same files), and the others the run folder gained or changed while the step ran. Logs, which a training step
rewrites from its first epoch, are restored from the copy. A record without declared outputs is never restored.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from histowsss.engine.atomic import write_bytes, write_json

if TYPE_CHECKING:
    from histowsss.engine.run_dir import RunDir

# the run folder's own records and the scratch runs of `histowsss tune`, not outputs of a step
NOT_OUTPUTS = {"status", "config_history", "config.yaml", "versions.json", "invocation.json", "report.html", "tuning"}
KEEP_PER_STEP = 5  # kept records per step, the newest


def is_resume_file(name: str) -> bool:
    """Whether a file name is a training step's resume point (engine/checkpoints.py: ``<tag>_last.safetensors``,
    its ``.prev`` copy, ``<tag>_train_state.pt``): deleted when the step starts over, read by no later step."""
    return name.endswith("_train_state.pt") or re.fullmatch(r".+_last(\.prev)?\.safetensors", name) is not None


def _listed(name: str) -> bool:
    """Files that count as outputs: not temporary files of atomic writes or the lock (hidden), not resume points."""
    return not name.startswith(".") and not is_resume_file(name)


def _walk(folder: Path, rel: str, top: bool = False, changed_since: int | None = None
          ) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, stat) of every output file under ``folder``, symbolic links followed (each real folder
    once). At the run folder's top (``top``): its own records left out, links not followed, and with
    ``changed_since`` only the files of folders changed since then (an atomic write renames into its folder)."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=not top):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        if top and root == str(folder):
            dirs[:] = [d for d in dirs if d not in NOT_OUTPUTS]
            files = [f for f in files if f not in NOT_OUTPUTS]
        if changed_since is not None:
            try:
                if os.stat(root).st_mtime_ns < changed_since:
                    continue
            except OSError:
                continue
        for f in files:
            if not _listed(f):
                continue
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            yield os.path.normpath(os.path.join(rel, os.path.relpath(os.path.join(root, f), folder))), st


def _declared_files(run_path: Path, declared: list[str]) -> Iterator[tuple[str, os.stat_result]]:
    for out in declared:
        p = run_path / out
        if out.endswith("/"):
            if p.is_dir():
                yield from _walk(p, out.rstrip("/"))
        elif p.is_file():
            yield os.path.normpath(out), os.stat(p)


def output_listing(run_path: Path, since_ns: int, declared: list[str]) -> dict[str, list[int]]:
    """relative path -> [size, mtime_ns] of a finished step's outputs: every file under ``declared`` (the step's
    ``outputs``), and the files of the run folder changed since ``since_ns`` (its start by the folder's file clock;
    a file of the step before written in the same clock tick may be listed too), as far as their folders changed
    (the pipeline's writes are atomic renames; a file rewritten in place in a folder that did not change, outside
    the declared outputs, is not listed)."""
    out = {rel: [st.st_size, st.st_mtime_ns] for rel, st in _walk(run_path, ".", top=True, changed_since=since_ns)
           if st.st_mtime_ns >= since_ns}
    out.update({rel: [st.st_size, st.st_mtime_ns] for rel, st in _declared_files(run_path, declared)})
    return out


def listing_path(run: "RunDir", step: str) -> Path:
    return run.path / "status" / "files" / f"{step}.json"


def write_listing(run: "RunDir", step: str, config_hash: str, since_ns: int, declared: list[str]) -> int:
    """Write ``status/files/<step>.json`` (the step's declared outputs and :func:`output_listing`); returns the
    number of files listed."""
    files = output_listing(run.path, since_ns, declared)
    write_json(listing_path(run, step), {"config_hash": config_hash, "declared": declared, "files": files})
    return len(files)


def kept_dir(run: "RunDir", step: str, config_hash: str) -> Path:
    return run.path / "status" / "kept" / f"{step}.{config_hash}"


def _is_log(rel: str) -> bool:
    return Path(rel).parts[0] == "logs"


def _read(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def keep(run: "RunDir", step: str, record: dict) -> None:
    """Keep the finished ``record`` of ``step`` (about to run with other settings): record, output list, logs."""
    h = record.get("config_hash")
    listing = _read(listing_path(run, step))
    if not h or listing is None or listing.get("config_hash") != h:
        return
    d = kept_dir(run, step, h)
    for rel in listing.get("files", {}):
        if _is_log(rel) and (run.path / rel).is_file():
            write_bytes(d / rel, (run.path / rel).read_bytes())
    write_json(d / "files.json", listing)
    write_json(d / "record.json", record)
    _prune(run, step)


def _prune(run: "RunDir", step: str) -> None:
    """Keep the newest :data:`KEEP_PER_STEP` kept records of ``step``."""
    folders = sorted((p for p in (run.path / "status" / "kept").glob(f"{step}.*") if p.is_dir()),
                     key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for p in folders[KEEP_PER_STEP:]:
        shutil.rmtree(p, ignore_errors=True)


def discard(run: "RunDir", step: str, config_hash: str) -> None:
    """Forget the kept record of ``step`` with ``config_hash`` (its settings run again: it cannot come back)."""
    shutil.rmtree(kept_dir(run, step, config_hash), ignore_errors=True)


def restorable(run: "RunDir", step: str, config_hash: str) -> dict | None:
    """The kept finished record of ``step`` with ``config_hash`` when its outputs are there unchanged (see the
    module's docstring); None when the step's current record has these settings (finished, or stopped: it goes
    on), or none is kept, or an output changed, went or came."""
    st = run.status(step)
    if st and st.get("config_hash") == config_hash:
        return None
    d = kept_dir(run, step, config_hash)
    record, listing = _read(d / "record.json"), _read(d / "files.json")
    if record is None or listing is None or record.get("state") != "done" or record.get("config_hash") != config_hash:
        return None
    files, declared = listing.get("files"), listing.get("declared")
    if not isinstance(files, dict) or not declared or not isinstance(declared, list):
        return None
    for rel, (size, mtime_ns) in files.items():
        try:
            if _is_log(rel):
                if (d / rel).stat().st_size != size:
                    return None
                continue
            now = os.stat(run.path / rel)
        except OSError:
            return None
        if now.st_size != size or now.st_mtime_ns != mtime_ns:
            return None
    for out in declared:  # a declared folder holds the files it held: none came
        if out.endswith("/"):
            there = {rel for rel, _ in _walk(run.path / out, out.rstrip("/"))} if (run.path / out).is_dir() else set()
            if there != {rel for rel in files if rel.startswith(out)}:
                return None
    return record


def restore(run: "RunDir", step: str, config_hash: str) -> dict | None:
    """Make the kept record of ``step`` (:func:`restorable`) its record again, with its output list and logs; the
    record it replaces is kept when finished (a stopped one is dropped: that step starts over when its settings
    come back). Returns the record, or None when there is none to restore."""
    from histowsss.engine.run_dir import _now

    record = restorable(run, step, config_hash)
    if record is None:
        return None
    d = kept_dir(run, step, config_hash)
    listing = _read(d / "files.json") or {}
    st = run.status(step)
    if st and st.get("state") == "done":
        keep(run, step, st)
    for rel in listing.get("files", {}):
        if _is_log(rel):
            write_bytes(run.path / rel, (d / rel).read_bytes())
            now = os.stat(run.path / rel)
            listing["files"][rel] = [now.st_size, now.st_mtime_ns]
    write_json(listing_path(run, step), listing)
    write_json(run.status_path(step), {**record, "restored": _now()})
    discard(run, step, config_hash)
    return record
