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


def run_pipeline(cfg: RunConfig, run: RunDir, start: str | None = None, stop: str | None = None,
                 overwrite: bool = False, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Run steps ``start``..``stop``; a finished step with the same config is skipped unless ``overwrite``."""
    results: dict[str, dict] = {}
    for name in select_steps(start, stop):
        mod = step_module(name)
        h = mod.config_hash(cfg)
        if run.is_done(name, h) and not overwrite:
            log(f"[skip] {name}: finished with this configuration")
            continue
        log(f"[run ] {name}")
        t0 = time.time()
        st = run.status(name)
        redo = overwrite or (st is not None and st.get("state") == "done")  # done with another config
        results[name] = mod.run(cfg, run, overwrite=redo) or {}
        log(f"[done] {name} in {time.time() - t0:.1f} s")
    return results
