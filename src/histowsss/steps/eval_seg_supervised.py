"""Step eval_seg_supervised: eval_seg for the upper-bound network (``pred_supervised/``, ``metrics/seg_supervised.json``).

Runs when ``upper_bound: true``; see :mod:`histowsss.steps.train_seg_supervised`.
"""

from __future__ import annotations

from histowsss.config import RunConfig
from histowsss.engine.run_dir import RunDir
from histowsss.steps import eval_seg
from histowsss.steps.train_seg_supervised import disabled, supervised_config  # noqa: F401  (same switch)

STEP = "eval_seg_supervised"


def config_hash(cfg: RunConfig) -> str:
    return eval_seg.config_hash(supervised_config(cfg))


def legacy_config_hashes(cfg: RunConfig) -> list[str]:
    """This step's hashes over the upper bound's earlier hashes (see train_seg_supervised.legacy_config_hashes)."""
    from histowsss.steps import train_seg_supervised

    return [eval_seg.config_hash(supervised_config(cfg), network_hash=h)
            for h in train_seg_supervised.legacy_config_hashes(cfg)]


def status_name(cfg: RunConfig) -> str:
    return STEP


def requires(cfg: RunConfig) -> list[tuple[str, str]]:
    """The finished steps this step reads: the upper-bound network (and eval_cam for the image gate)."""
    return eval_seg.requires(supervised_config(cfg))


def run(cfg: RunConfig, run: RunDir, overwrite: bool = False) -> dict:
    """Evaluate the upper-bound network on the test splits (see :func:`histowsss.steps.eval_seg.run`)."""
    return eval_seg.run(supervised_config(cfg), run, overwrite=overwrite)
