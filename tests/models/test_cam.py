"""The plain CAM network's pooling: the class map's mean (GAP) or the mean of its strongest cells (top-k)."""

from __future__ import annotations

import pytest
import torch

from histowsss.config import ConfigError, load_config
from histowsss.models.cam import pool_cam


def test_topk_pooling_averages_the_strongest_cells_and_gap_all_of_them():
    cam = torch.zeros(2, 1, 4, 4)
    cam[0, 0, 0, :2] = 8.0  # a small strong region: 2 of 16 cells
    cam[1, 0] = 1.0  # weak everywhere
    gap = pool_cam(cam)
    assert torch.allclose(gap[:, 0], torch.tensor([1.0, 1.0]))  # the average cannot tell them apart
    top = pool_cam(cam, "topk", 0.125)  # 2 cells
    assert torch.allclose(top[:, 0], torch.tensor([8.0, 1.0]))
    assert torch.allclose(pool_cam(cam, "topk", 1.0), gap)  # every cell: the average
    assert torch.allclose(pool_cam(cam, "topk", 0.01)[:, 0], torch.tensor([8.0, 1.0]))  # at least one cell
    assert pool_cam(cam.bfloat16(), "topk").dtype == torch.float32
    with pytest.raises(ValueError, match="pooling must be"):
        pool_cam(cam, "max")


def test_topk_pooling_is_configured_and_kept_out_of_rpnet():
    cfg = load_config("demo", ["train_cam.pooling=topk", "train_cam.topk_fraction=0.1"])
    assert (cfg.train_cam.pooling, cfg.train_cam.topk_fraction) == ("topk", 0.1)
    assert cfg.step_hash("train_cam") != load_config("demo").step_hash("train_cam")
    with pytest.raises(ConfigError, match="pooling=topk is for network: cam"):
        load_config("demo", ["train_cam.pooling=topk", "train_cam.network=rpnet"])
