"""Step train_seg_supervised: the segmentation network of train_seg, same schedule, on the ground-truth masks.

The upper bound every weakly supervised number is read against. Runs when the config says ``upper_bound: true``
(the GlaS configs do), so that one ``histowsss run`` yields the weak network and its bound side by side; it is
``train_seg`` with ``train_seg.supervised: true`` (files ``checkpoints/seg_supervised.*``, status record
``train_seg_supervised``), which is also what ``--set train_seg.supervised=true`` trains by hand.
"""

from __future__ import annotations

from histowsss.config import RunConfig
from histowsss.engine.run_dir import RunDir
from histowsss.steps import train_seg

STEP = "train_seg_supervised"


def supervised_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``train_seg.supervised: true``."""
    return cfg.model_copy(update={"train_seg": cfg.train_seg.model_copy(update={"supervised": True})})


def disabled(cfg: RunConfig) -> str | None:
    """Why the step does not run with ``cfg`` (None: it runs)."""
    return None if cfg.upper_bound else "upper_bound is false"


def config_hash(cfg: RunConfig) -> str:
    return train_seg.config_hash(supervised_config(cfg))


def status_name(cfg: RunConfig) -> str:
    return STEP


def requires(cfg: RunConfig) -> list[tuple[str, str]]:
    """The finished steps this step reads (none: it trains on the masks)."""
    return train_seg.requires(supervised_config(cfg))


def run(cfg: RunConfig, run: RunDir, overwrite: bool = False) -> dict:
    """Train the upper-bound network (see :func:`histowsss.steps.train_seg.run`)."""
    return train_seg.run(supervised_config(cfg), run, overwrite=overwrite)
