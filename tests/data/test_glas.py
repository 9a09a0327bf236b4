"""The real GlaS data (../shared/data/glas) read with the shipped configs; skipped when absent."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from histowsss.config import load_config
from histowsss.data.io import image_size, read_mask, read_rgb
from histowsss.data.manifest import read_manifest
from histowsss.data.masks import load_class_mask
from histowsss.data.stats import patient_split_overlap, split_class_table

pytestmark = pytest.mark.glas


def _cfg(name: str, glas_dir):
    return load_config(name, [f"data.manifest={glas_dir / 'manifest.csv'}"]).data


def test_glas_gland_manifest(glas_dir):
    cfg = _cfg("glas-gland", glas_dir)
    samples = read_manifest(cfg)
    assert len(samples) == 165
    assert Counter(s.split for s in samples) == {"train": 85, "testA": 60, "testB": 20}
    assert all(s.labels == () for s in samples)  # labels come from masks (OEEM crop rule)
    first = samples[0]
    assert first.name == "train_1" and first.image == glas_dir / "images/train_1.png"
    img = read_rgb(first.image)
    assert img.shape == (522, 775, 3) and img.dtype == np.uint8
    assert image_size(first.image) == (522, 775)
    raw = read_mask(first.mask, expected_hw=img.shape[:2])
    assert set(np.unique(raw).tolist()) == {0, 255}
    m = load_class_mask(first, cfg, image_hw=img.shape[:2])
    assert m.shape == (522, 775) and set(np.unique(m).tolist()) == {0, 1}
    assert abs(m.mean() - float(first.extra["fg_fraction"])) < 1e-3


def test_glas_malignant_manifest(glas_dir):
    cfg = _cfg("glas-malignant", glas_dir)
    samples = read_manifest(cfg, splits=cfg.train_splits)
    assert len(samples) == 85
    assert Counter(s.labels for s in samples) == {("benign",): 37, ("malignant",): 48}
    first = samples[0]
    assert first.labels == ("malignant",)
    img = read_rgb(first.image)
    assert img.shape == (522, 775, 3) and img.dtype == np.uint8
    m = load_class_mask(first, cfg, image_hw=img.shape[:2])  # image_scale 0.5
    assert m.shape == (261, 388) and set(np.unique(m).tolist()) == {0, 1}
    benign = next(s for s in samples if s.labels == ("benign",))
    assert (load_class_mask(benign, cfg) == 0).all()  # gland pixels of benign images are not the target


def test_glas_stats_table_and_patient_overlap(glas_dir):
    cfg = _cfg("glas-malignant", glas_dir)
    samples = read_manifest(cfg)
    table = {r["split"]: r for r in split_class_table(samples, cfg.classes.names)}
    assert table["train"] == {"split": "train", "images": 85, "patients": 15, "benign images": 37,
                              "benign patients": 8, "malignant images": 48, "malignant patients": 10}
    assert table["all"]["images"] == 165
    overlap = patient_split_overlap(samples)
    assert len(overlap) == 11 and overlap["3"] == ["testA", "testB", "train"]
