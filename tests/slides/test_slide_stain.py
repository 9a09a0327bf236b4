"""Stain normalisation of slide tiles (Reinhard, Macenko) uses the slide's statistics: one mapping for every tile."""

from __future__ import annotations

import numpy as np
import pytest

from histowsss.config import load_config
from histowsss.data.stain import macenko, reinhard
from histowsss.slides.predict import _stain_fn
from histowsss.slides.tissue import tissue_mask
from tests.conftest import tissue_slide_rgb


@pytest.mark.parametrize("method,own", [("reinhard", reinhard), ("macenko", macenko)])
def test_every_tile_of_a_slide_gets_the_same_mapping(tmp_path, method, own):
    cfg = load_config("demo", [f"data.manifest={tmp_path / 'm.csv'}", f"data.stain_normalization={method}"])
    rgb = tissue_slide_rgb()
    fn = _stain_fn(cfg, rgb, tissue_mask(rgb))
    rgb[100:150, 210:420] = (60, 25, 100)  # a dark nucleus-dense strip: tiles with and without it differ in colour
    a, b = rgb[40:100, 40:180], rgb[100:300, 210:420]
    pixel = (214, 120, 180)  # tissue colour present in both
    ya, xa = np.argwhere((a == pixel).all(-1))[0]
    yb, xb = np.argwhere((b == pixel).all(-1))[0]
    assert (fn(a)[ya, xa] == fn(b)[yb, xb]).all()
    assert not (own(a)[ya, xa] == own(b)[yb, xb]).all()  # per-tile statistics would differ
    assert _stain_fn(load_config("demo", [f"data.manifest={tmp_path / 'm.csv'}"]), rgb, tissue_mask(rgb)) is None
