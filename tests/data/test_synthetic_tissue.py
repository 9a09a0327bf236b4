"""Tests for the rendering of one synthetic H&E tile."""

from __future__ import annotations

import numpy as np
import pytest

from histowsss.data.synthetic_tissue import render_tissue

SIZE = 128


@pytest.mark.parametrize("malignant", [False, True])
def test_render_tissue_outputs(malignant: bool) -> None:
    rgb, mask, inst = render_tissue(np.random.default_rng(0), SIZE, malignant)
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
    assert mask.shape == (SIZE, SIZE) and mask.dtype == bool
    assert inst.shape == (SIZE, SIZE) and inst.dtype == np.int32
    np.testing.assert_array_equal(mask, inst > 0)
    ids = np.unique(inst)
    np.testing.assert_array_equal(ids, np.arange(inst.max() + 1))  # contiguous 0..n
    assert 0.3 <= mask.mean() <= 0.6
    rgb2, mask2, inst2 = render_tissue(np.random.default_rng(0), SIZE, malignant)
    np.testing.assert_array_equal(rgb, rgb2)
    np.testing.assert_array_equal(inst, inst2)


def test_render_tissue_colours_look_like_he() -> None:
    rgb, mask, _ = render_tissue(np.random.default_rng(1), 256, False)
    stroma = rgb[~mask].astype(float).mean(0)
    assert stroma[0] > stroma[1] and stroma[2] > stroma[1]  # pink/purple: R, B > G
    assert 200 < stroma[0] < 250
    gray = rgb.astype(float).mean(-1)
    dark = rgb[gray < 110].astype(float).mean(0)
    assert dark[2] > dark[1]  # hematoxylin nuclei are blue-purple
    assert (gray[mask] > 235).mean() > 0.1  # white lumina inside the glands


def test_malignant_has_more_nuclei_and_glands() -> None:
    def stats(malignant: bool) -> tuple[float, float]:
        dark, count = [], []
        for i in range(4):
            rgb, _, inst = render_tissue(np.random.default_rng(100 + i), 256, malignant)
            dark.append((rgb.astype(float).mean(-1) < 120).mean())
            count.append(inst.max())
        return float(np.mean(dark)), float(np.mean(count))

    dark_b, n_b = stats(False)
    dark_m, n_m = stats(True)
    assert dark_m > 1.5 * dark_b
    assert n_m > n_b
    assert 3 <= n_b <= 6 and 6 <= n_m <= 12
