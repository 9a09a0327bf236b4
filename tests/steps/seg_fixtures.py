"""Helpers of the train_seg / eval_seg tests: fast settings and fake pseudo-masks (no CAM / IRN training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histowsss.config import load_config
from histowsss.data.masks import load_class_mask
from histowsss.engine.atomic import write_png
from histowsss.engine.run_dir import RunDir
from histowsss.steps import make_sem_seg_labels, seg_labels
from histowsss.steps.common import samples_for

FAST = ["train_seg.encoder=test_efficientnet", "train_seg.encoder_weights=none",
        "train_seg.decoder_channels=[16,16,8,8,8]", "train_seg.epochs=2", "train_seg.batch_size=4",
        "train_seg.crop_size=32", "train_seg.crops_per_image=2", "eval_seg.tile_size=32", "eval_seg.batch_size=16"]


def make_cfg(manifest: Path, *extra: str):
    """The demo config on ``manifest`` with the fast settings and ``extra`` overrides."""
    return load_config("demo", [f"data.manifest={manifest}", *FAST, *extra])


def fake_pseudo(cfg, run: RunDir, noise: float = 0.1) -> None:
    """pseudo/<name>.png = ground truth with a fraction of pixels flipped + a finished make_sem_seg_labels record."""
    rng = np.random.default_rng(0)
    with run.step("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg)):
        for s in samples_for(cfg, seg_labels.train_splits(cfg)):
            gt = load_class_mask(s, cfg.data)
            flip = rng.random(gt.shape) < noise
            write_png(run.path / "pseudo" / f"{s.name}.png", np.where(flip, 1 - gt, gt).astype(np.uint8))
