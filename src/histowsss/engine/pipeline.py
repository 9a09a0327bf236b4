"""Run pipeline steps in order, skipping finished ones (same config hash) and resuming unfinished ones."""

from __future__ import annotations

import time
from typing import Callable

from histowsss.config import RunConfig
from histowsss.engine.run_dir import RunDir
from histowsss.steps.registry import select_steps, step_module


def step_config_hash(cfg: RunConfig, module) -> str:
    """The config hash a step records (each step module exposes ``config_hash(cfg)``)."""
    return module.config_hash(cfg)


def status_name(cfg: RunConfig, name: str, module) -> str:
    """The status record a step writes: its name, or the module's ``status_name(cfg)`` where one network of a
    step has several variants (train_seg / eval_seg: weak and supervised)."""
    fn = getattr(module, "status_name", None)
    return fn(cfg) if fn is not None else name


def run_pipeline(cfg: RunConfig, run: RunDir, start: str | None = None, stop: str | None = None,
                 overwrite: bool = False, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Run steps ``start``..``stop``; a finished step with the same config is skipped unless ``overwrite``."""
    results: dict[str, dict] = {}
    for name in select_steps(start, stop):
        mod = step_module(name)
        off = getattr(mod, "disabled", lambda c: None)(cfg)
        if off:
            log(f"[off ] {name}: {off}")
            continue
        h = mod.config_hash(cfg)
        key = status_name(cfg, name, mod)
        if run.is_done(key, h) and not overwrite:
            log(f"[skip] {key}: finished with this configuration")
            continue
        log(f"[run ] {key}")
        t0 = time.time()
        st = run.status(key)
        redo = overwrite or (st is not None and st.get("state") == "done")  # done with another config
        results[name] = mod.run(cfg, run, overwrite=redo) or {}
        log(f"[done] {key} in {time.time() - t0:.1f} s")
    return results
