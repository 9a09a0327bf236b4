"""The ordered pipeline: step names -> modules with ``STEP``, ``config_hash(cfg)`` and ``run(cfg, run_dir, overwrite)``;
optionally ``status_name(cfg)`` (the status record, when it depends on the config) and ``disabled(cfg)`` (a reason
not to run with this config, e.g. the supervised upper bound without ``upper_bound: true``), ``requires(cfg)`` (the
finished steps it reads, as (status record, config hash)) and ``requires_any(cfg)`` (steps of which one is enough),
both checked before a run starts; a finished step is stale when a step of ``requires`` was made again after it (for
``requires_any``, the step's ``stale_reason`` knows which one it read)."""

from __future__ import annotations

import importlib
from types import ModuleType

PIPELINE: list[str] = ["train_cam", "make_cam", "eval_cam",
                       "cam_to_ir_label", "train_irn", "make_sem_seg_labels", "make_ins_seg_labels", "eval_sem_seg",
                       "train_seg", "eval_seg", "train_seg_supervised", "eval_seg_supervised"]


def step_module(name: str) -> ModuleType:
    """The module of a pipeline step (clear error for unknown names)."""
    if name not in PIPELINE:
        raise KeyError(f"unknown step {name!r}; steps in order: {', '.join(PIPELINE)}")
    return importlib.import_module(f"histowsss.steps.{name}")


def select_steps(start: str | None, stop: str | None) -> list[str]:
    """Steps from ``start`` to ``stop`` inclusive, in pipeline order."""
    for s in (start, stop):
        if s is not None and s not in PIPELINE:
            raise KeyError(f"unknown step {s!r}; steps in order: {', '.join(PIPELINE)}")
    i = PIPELINE.index(start) if start else 0
    j = PIPELINE.index(stop) if stop else len(PIPELINE) - 1
    if i > j:
        raise ValueError(f"--from {start} comes after --to {stop}")
    return PIPELINE[i : j + 1]
