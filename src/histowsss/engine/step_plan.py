"""The plan of a run: each step's status record name, its config hash, and whether the config leaves it out."""

from __future__ import annotations

from histowsss.config import RunConfig
from histowsss.steps.registry import select_steps, step_module

def step_config_hash(cfg: RunConfig, module) -> str:
    """The config hash a step records (each step module exposes ``config_hash(cfg)``)."""
    return module.config_hash(cfg)


def status_name(cfg: RunConfig, name: str, module) -> str:
    """The status record a step writes: its name, or the module's ``status_name(cfg)`` where one network of a
    step has several variants (train_seg / eval_seg: weak and supervised)."""
    fn = getattr(module, "status_name", None)
    return fn(cfg) if fn is not None else name


# steps that share their work among torchrun's processes (DDP training; evaluation on rank 0 after it)
DISTRIBUTED_STEPS = ("train_seg", "eval_seg", "train_seg_supervised", "eval_seg_supervised")


def step_plan(cfg: RunConfig, start: str | None = None, stop: str | None = None) -> list[tuple]:
    """The steps ``start``..``stop`` as (name, module, hash, status key, reason it is off or None), unchecked."""
    plan = []
    for name in select_steps(start, stop):
        mod = step_module(name)
        plan.append((name, mod, mod.config_hash(cfg), status_name(cfg, name, mod),
                     getattr(mod, "disabled", lambda c: None)(cfg)))


    return plan
