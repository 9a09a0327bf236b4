"""Finished step records carried over: a record made under an earlier hash rule of the same settings is adopted,
and a kept record of settings gone back to is restored (the store of kept records: :mod:`kept_records`)."""

from __future__ import annotations

from typing import Callable

from histowsss.config import RunConfig
from histowsss.engine.run_dir import RunDir
from histowsss.engine.step_plan import status_name
from histowsss.steps.registry import PIPELINE, step_module


def legacy_match(cfg: RunConfig, run: RunDir, key: str, mod) -> str | None:
    """The hash of a finished record of step ``key`` made under an earlier hash rule (the module's
    ``legacy_config_hashes``) with the settings of now, as far as this step reads them; None when it is not one.
    The earlier rule is applied to the config of now and to the one the record ran with (its ``run_config``): a run
    that changes a setting the new rule leaves out (a weak-label one, for the upper bound) still keeps the record."""
    if not hasattr(mod, "legacy_config_hashes"):
        return None
    st = run.status(key)
    h = mod.config_hash(cfg)
    old = (st or {}).get("config_hash")
    if not st or st.get("state") != "done" or old == h:
        return None
    if old in mod.legacy_config_hashes(cfg):
        return old
    then = _recorded_config(run, st)
    if then is not None and mod.config_hash(then) == h and old in mod.legacy_config_hashes(then):
        return old
    return None


def _recorded_config(run: RunDir, st: dict) -> RunConfig | None:
    """The config a status record names (``run_config``, kept in config_history/), or None when unreadable."""
    from histowsss.config import load_config

    rel = st.get("run_config")
    if not rel or not (run.path / rel).is_file():
        return None
    try:
        return load_config(str(run.path / rel))
    except Exception:  # written by another version (an option since removed): not comparable
        return None


def adopt_legacy_records(cfg: RunConfig, run: RunDir, log: Callable[[str], None] = print) -> list[str]:
    """Relabel finished steps recorded under an earlier hash rule of the same settings (a step's
    ``legacy_config_hashes(cfg)``, e.g. the upper bound before its hash left out the weak-label settings): their
    status record, and what the step keeps of the hash beside its outputs (``adopt_legacy``), take the hash of now,
    so they stay finished instead of being redone. Outputs are not touched. Returns the steps relabelled."""
    import os

    from histowsss.engine.atomic import write_json

    if os.environ.get("RANK", "0") != "0" or not (run.path / "status").is_dir():
        return []  # (the other ranks take such a record as finished without writing: legacy_match)
    adopted = []
    for name in PIPELINE:
        mod = step_module(name)
        key, h = status_name(cfg, name, mod), mod.config_hash(cfg)
        old = legacy_match(cfg, run, key, mod)
        if old is None:
            continue
        st = run.status(key)
        if hasattr(mod, "adopt_legacy"):
            mod.adopt_legacy(cfg, run, old, h)
        write_json(run.status_path(key), {**st, "config_hash": h, "legacy_config_hash": old})
        log(f"[keep] {key}: recorded under an earlier hash rule ({old}); the same settings, relabelled {h}")
        adopted.append(key)
    return adopted


def kept_to_restore(cfg: RunConfig, run: RunDir) -> dict[str, dict]:
    """Status key -> kept finished record of these settings whose outputs are unchanged (:meth:`RunDir.restorable`:
    a run with other settings was stopped in the step before rewriting them)."""
    if not (run.path / "status" / "kept").is_dir():
        return {}
    out = {}
    for name in PIPELINE:
        mod = step_module(name)
        key, h = status_name(cfg, name, mod), mod.config_hash(cfg)
        if (kept := run.restorable(key, h)) is not None:
            out[key] = kept
    return out


def with_kept(cfg: RunConfig, run: RunDir) -> RunDir:
    """``run`` as it is once the kept records of these settings are restored (:func:`restore_kept_records`): what
    a dry run, the checks before a run and torchrun's other processes decide on, as the run itself does."""
    kept = kept_to_restore(cfg, run)
    return run.restored_view(kept) if kept else run


def restore_kept_records(cfg: RunConfig, run: RunDir, log: Callable[[str], None] = print,
                         dry_run: bool = False) -> list[str]:
    """Make the kept finished records of these settings whose outputs are unchanged (:func:`kept_to_restore`) the
    steps' records again, so going back to the settings of before does not make that step and every later one
    again (each is then decided as any finished record: made again if an input is). Under torchrun only the first
    process writes; ``dry_run`` writes nothing. Returns the steps restored."""
    import os

    restored = []
    for key, kept in kept_to_restore(cfg, run).items():
        if not dry_run and os.environ.get("RANK", "0") == "0":
            run.restore(key, kept["config_hash"])
        log(f"[keep] {key}: finished with these settings at {kept.get('finished', '?')}, its outputs unchanged since "
            "(a run with other settings stopped before rewriting them): its record "
            + ("would be restored" if dry_run else "is restored"))
        restored.append(key)
    return restored
