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


def legacy_config_hashes(cfg: RunConfig) -> list[str]:
    """Hashes a finished upper bound of these settings was recorded with by earlier versions (they hashed the weak-
    label settings too); :func:`histowsss.engine.earlier_records.adopt_legacy_records` relabels such a record."""
    return [train_seg.legacy_supervised_hash(supervised_config(cfg))]


def adopt_legacy(cfg: RunConfig, run: RunDir, old: str, new: str) -> None:
    """Relabel the network's checkpoint metadata (every ensemble member's) from hash ``old`` to ``new``."""
    import json

    from histowsss.engine.atomic import write_json
    from histowsss.steps.segnet_io import checkpoint_path

    sup = supervised_config(cfg)
    first = checkpoint_path(run.path, train_seg.tag(sup)).with_suffix(".json")
    tags = json.loads(first.read_text()).get("member_tags") if first.exists() else None
    for mt in tags or [train_seg.tag(sup)]:
        p = checkpoint_path(run.path, mt).with_suffix(".json")
        if p.exists():
            meta = json.loads(p.read_text())
            if meta.get("config_hash") == old:
                meta["config_hash"] = new
                write_json(p, meta)


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
