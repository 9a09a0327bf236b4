"""Run pipeline steps in order, skipping finished ones (same config hash) and resuming unfinished ones: the plan
checked before anything is written (:mod:`preflight`), each step decided (:mod:`decisions`), then run."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

from histowsss.config import ConfigError, RunConfig
from histowsss.config.run import digests_held
from histowsss.engine.decisions import clicks_stale, handoffs_standing, is_finished, step_decision
from histowsss.engine.earlier_records import adopt_legacy_records, restore_kept_records, with_kept
from histowsss.engine.preflight import check_inputs, check_manifest
from histowsss.engine.run_dir import RunDir
from histowsss.engine.step_plan import DISTRIBUTED_STEPS, step_plan


def plan_steps(cfg: RunConfig, run: RunDir, start: str | None = None, stop: str | None = None,
               overwrite: bool = False) -> list[tuple]:


    """The steps ``start``..``stop`` as (name, module, hash, status key, reason it is off or None), checked before
    anything is written: test splits that are not held out (:func:`histowsss.config.split_leaks`), unknown step
    names, and under torchrun (WORLD_SIZE > 1) steps other than the
    segmentation ones with work to do (they would run once per process, all on the same files), are errors."""
    from histowsss.config import background_only_settings, split_leaks
    from histowsss.engine.ranks import env_world

    leaks = split_leaks(cfg)
    if leaks:  # test images trained on, or settings chosen on them
        raise ConfigError("; ".join(leaks))
    unused = background_only_settings(cfg)
    if unused:  # they would be recorded as applied and do nothing
        raise ConfigError("; ".join(unused))
    plan = step_plan(cfg, start, stop)
    todo = check_inputs(cfg, run, plan, overwrite, stop)
    check_manifest(cfg, run, todo)
    world = env_world()[1]
    if world > 1:
        todo = [key for name, _, _, key, _ in plan if key in todo and name not in DISTRIBUTED_STEPS]
        if todo:
            raise ConfigError(f"{', '.join(todo)} would run in each of the {world} torchrun processes; only the "
                              "segmentation steps share their work: run the earlier steps in one process first "
                              f"(`histowsss run CONFIG -r {run.path} --to eval_sem_seg`), then torchrun with "
                              "--from train_seg --to eval_seg")
    return plan


def run_pipeline(cfg: RunConfig, run: RunDir, start: str | None = None, stop: str | None = None,
                 overwrite: bool = False, log: Callable[[str], None] = print,
                 dry_run: bool = False) -> dict[str, dict]:
    """Run steps ``start``..``stop``; a finished step with the same config is skipped unless ``overwrite``
    (see :func:`plan_steps` for what is refused). ``dry_run``: say what each step would do and why, write
    nothing (the steps that would run map to whether what their readers read of them stands,
    :func:`~histowsss.engine.decisions.handoffs_standing`)."""
    with digests_held():  # (the manifest as it is now, looked at once for the checks; each step records its own)
        run.manifest_digests(keep=not dry_run)  # (image and mask fingerprints of earlier processes, kept for later)
        if not dry_run:
            adopt_legacy_records(cfg, run, log)
        restore_kept_records(cfg, run, log, dry_run)
        run = with_kept(cfg, run)  # (a dry run, torchrun's other processes: the folder as the first one makes it)
        plan = plan_steps(cfg, run, start, stop, overwrite)
        if not Path(cfg.data.manifest).is_file():  # (no step has work: else the checks before a run stop on it)
            log(f"warning: {cfg.data.manifest}: the manifest (data.manifest) is not found from {Path.cwd()}; the "
                "finished steps are judged by their records alone (an edit of the data would go unseen)")
        _report_clicks(cfg, run, plan, overwrite, log)
    with digests_held() if dry_run else nullcontext():
        return _run_plan(cfg, run, plan, overwrite, log, dry_run)


def _run_plan(cfg: RunConfig, run: RunDir, plan: list[tuple], overwrite: bool, log: Callable[[str], None],
              dry_run: bool) -> dict[str, dict]:
    """The steps of ``plan`` in order, each as :func:`~histowsss.engine.decisions.step_decision` decides (see
    :func:`run_pipeline`)."""
    results: dict[str, dict] = {}
    for entry in plan:
        name, mod, h, key, off = entry
        verb, line = step_decision(cfg, run, entry, overwrite, results if dry_run else None)
        log(line)
        if verb in ("off", "skip"):
            continue
        if dry_run:  # (made again with what later steps read of it unchanged: they are not made again for it)
            results[name] = handoffs_standing(cfg, run, entry, results)
            continue
        t0 = time.time()
        st = run.status(key)
        # start over: asked, stale, or a record of other settings (finished, or stopped: nothing of it to go on from)
        redo = overwrite or verb == "restart" or (st is not None and (st.get("state") == "done"
                                                                      or st.get("config_hash") != h))
        # (a step that keeps its outputs that still hold, when it is made again for other reasons than --overwrite)
        reuse = {"reuse": not overwrite} if getattr(mod, "REUSES_OUTPUTS", False) else {}
        results[name] = mod.run(cfg, run, overwrite=redo, **reuse) or {}
        run.forget_restored(key)
        log(f"[done] {key} in {time.time() - t0:.1f} s")
    if dry_run:
        log(f"dry run: {len(results)} step(s) would run" + (f" ({', '.join(results)})" if results else "")
            + f"; nothing was written to {run.path}")
    return results


def _report_clicks(cfg: RunConfig, run: RunDir, plan: list, overwrite: bool, log: Callable[[str], None]) -> None:
    """Before any step runs: when a step that uses clicks will run, what it will make of them (and a bad click
    stops the run here, not after the CAM stage)."""
    from histowsss.data.points import CLICK_STEPS, clicks_report, uses_points

    if (cfg.points.file is not None or cfg.data.points_column is not None) and not cfg.points.use_in:
        log("note: clicks are configured (points.file / data.points_column) but points.use_in is empty: no step "
            "uses them")
    steps = {CLICK_STEPS[w] for w in CLICK_STEPS if uses_points(cfg, w)}
    if any(name in steps and not off and (overwrite or not is_finished(cfg, run, key, h)
                                          or clicks_stale(cfg, run, name, key))
           for name, _, h, key, off in plan):
        for line in clicks_report(cfg):
            log(line)
