"""IRN model: shapes, cached-feature consistency, mean shift and the pair losses."""

from __future__ import annotations

import pytest
import torch

from histowsss.config import BackboneConfig
from histowsss.models.irnet import (IGNORE, IRNet, MeanShift, affinity_loss, displacement_loss, irn_losses,
                                    pair_labels, path_max)
from histowsss.ops.path_index import edge_affinities, neighbour_offsets


@pytest.fixture(scope="module")
def model() -> IRNet:
    torch.manual_seed(0)
    return IRNet(BackboneConfig(weights="none"), edge_channels=8, dp_channels=16).eval()


def test_outputs_live_on_the_stride4_grid(model: IRNet):
    x = torch.randn(2, 3, 70, 90)
    edge, dp = model(x)
    assert edge.shape == (2, 18, 23) and dp.shape == (2, 2, 18, 23)
    b, d = model.infer(x[:1])
    assert b.shape == (18, 23) and d.shape == (2, 18, 23) and 0 <= float(b.min()) <= float(b.max()) <= 1


def test_backbone_is_frozen_and_heads_train(model: IRNet):
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert not model.backbone.training and model.head.training
    model.eval()


def test_cached_features_give_the_same_outputs_as_the_image(model: IRNet):
    x = torch.randn(1, 3, 64, 96)
    e1, d1 = model(x)
    feats = [f.half() for f in model.extract(x)]  # the cache stores float16
    e2, d2 = model.heads(feats, (16, 24))
    assert torch.allclose(e1, e2, atol=1e-2) and torch.allclose(d1, d2, atol=1e-2)


def test_feature_cache_crops_are_aligned_and_padded():
    import numpy as np

    from histowsss.steps.train_irn import FeatureCache

    cache = object.__new__(FeatureCache)
    cache.reductions = [4, 8, 16]
    lab = torch.arange(10 * 12).view(10, 12) % 3
    feats = [torch.randn(2, 10, 12), torch.randn(2, 5, 6), torch.randn(2, 3, 3)]
    cache.items = [[(feats, lab)]]
    rng = np.random.default_rng(0)
    for _ in range(10):
        f, lw = cache.crop(0, 0, 8, 4, rng)
        assert [t.shape[1:] for t in f] == [(8, 8), (4, 4), (2, 2)] and lw.shape == (8, 8)
    f, lw = cache.crop(0, 0, 16, 4, rng)  # larger than the image: padded, labels ignore
    assert lw.shape == (16, 16) and (lw[10:] == IGNORE).all() and (lw[:10, :12] == lab).all()
    assert (f[0][:, 10:] == 0).all()


def test_mean_shift_tracks_and_subtracts_the_mean():
    ms = MeanShift(2, momentum=1.0)
    x = torch.ones(1, 2, 4, 4) * torch.tensor([3.0, -1.0]).view(1, 2, 1, 1)
    ms.train()
    assert torch.equal(ms(x), x)
    ms.eval()
    assert torch.allclose(ms(x), torch.zeros_like(x), atol=1e-6)


def test_path_max_agrees_with_the_random_walk_affinities():
    torch.manual_seed(1)
    b = torch.rand(1, 9, 11)
    r = 4
    pm = path_max(b, r)[0]
    _, aff = edge_affinities(b[0], r, beta=1.0)
    inside = aff > 0  # edge_affinities is 0 where the partner is outside the image
    assert torch.allclose((1 - pm)[inside], aff[inside], atol=1e-6)


def test_pair_labels_drop_pairs_touching_ignore():
    lab = torch.zeros(1, 6, 6, dtype=torch.long)
    lab[0, :, 3:] = 1
    lab[0, 2, 2] = IGNORE
    bg, fg, neg = pair_labels(lab, radius=3, background=0)
    assert not (bg | fg | neg)[0, :, 2, 2].any()  # source is the ignore pixel
    offsets = neighbour_offsets(3)
    for k, (dy, dx) in enumerate(offsets):  # partner is the ignore pixel
        y, x = 2 - dy, 2 - dx
        if 0 <= y < 6 and 0 <= x < 6:
            assert not (bg | fg | neg)[0, k, y, x]
    assert (bg & fg).sum() == 0 and (bg & neg).sum() == 0
    assert neg.any() and bg.any() and fg.any()


def test_affinity_loss_ignores_pairs_touching_ignore_pixels():
    torch.manual_seed(0)
    r = 5
    lab = torch.full((1, 8, 10), IGNORE, dtype=torch.long)
    lab[0, 3, 2], lab[0, 3, 6] = 0, 1  # one negative pair (offset (0, 4)); everything else unknown
    boundary = torch.rand(1, 8, 10, requires_grad=True)
    bg, fg, neg = pair_labels(lab, r, background=0)
    assert int(neg.sum()) == 1 and int(bg.sum()) == 0 and int(fg.sum()) == 0
    loss = affinity_loss(boundary, bg, fg, neg, r)
    assert float(loss["pos_aff"].detach()) == 0.0
    loss["neg_aff"].backward()
    g = boundary.grad[0]
    on_path = torch.zeros_like(g, dtype=torch.bool)
    on_path[3, 2:7] = True
    assert g[~on_path].abs().sum() == 0 and g[on_path].abs().sum() > 0
    # a change of the boundary away from the only valid pair changes nothing
    b2 = boundary.detach().clone()
    b2[0, 6:, :] = 0.99
    assert torch.allclose(affinity_loss(b2, bg, fg, neg, r)["neg_aff"], loss["neg_aff"].detach())
    # all-ignore labels: zero loss, zero gradient, no NaN
    allign = torch.full((1, 8, 10), IGNORE, dtype=torch.long)
    dp = torch.zeros(1, 2, 8, 10, requires_grad=True)
    edge = torch.zeros(1, 8, 10, requires_grad=True)
    out = irn_losses(edge, dp, allign, r, background=0)
    out["total"].backward()
    assert float(out["total"].detach()) == 0.0 and edge.grad.abs().sum() == 0 and dp.grad.abs().sum() == 0


def test_displacement_loss_is_zero_for_a_field_pointing_at_the_centroid():
    h = w = 20
    lab = torch.zeros(1, h, w, dtype=torch.long)
    lab[0, 3:12, 4:13] = 1
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    dp = torch.zeros(1, 2, h, w)
    blob = lab[0] == 1
    dp[0, 0][blob] = (7.0 - ys)[blob]
    dp[0, 1][blob] = (8.0 - xs)[blob]
    bg, fg, _ = pair_labels(lab, 4, background=0)
    out = displacement_loss(dp, fg, bg, 4)
    assert float(out["dp_fg"]) < 1e-6 and float(out["dp_bg"]) < 1e-6
    out2 = displacement_loss(torch.zeros_like(dp), fg, bg, 4)
    assert float(out2["dp_fg"]) > 0.5
    # with pair_step 2 the estimate stays zero for the perfect field
    bg2, fg2, _ = pair_labels(lab, 4, background=0, step=2, phase=(1, 0))
    assert float(displacement_loss(dp, fg2, bg2, 4, step=2, phase=(1, 0))["dp_fg"]) < 1e-6


def test_a_fresh_model_extracts_with_frozen_batchnorm_statistics():
    """Caching right after construction must give the features inference sees (BN in eval mode)."""
    torch.manual_seed(0)
    m = IRNet(BackboneConfig(weights="none"), edge_channels=8, dp_channels=16)
    x = torch.randn(2, 3, 64, 64)
    cached = m.extract(x)
    m.train()
    m.eval()
    assert all(torch.equal(a, b) for a, b in zip(cached, m.extract(x)))
    assert not m.backbone.training


def test_without_a_background_class_every_same_class_pair_is_foreground():
    """Tissue types (no background): class 0 is a tissue like the others, so its pairs are foreground pairs,
    the positive affinity is the foreground term alone and there is no background displacement term."""
    lab = torch.zeros(1, 8, 8, dtype=torch.long)
    lab[0, :, 6:] = 1  # unequal halves: the pooled and the averaged positive terms differ
    bg0, fg0, neg0 = pair_labels(lab, 3, background=0)
    bgn, fgn, negn = pair_labels(lab, 3, background=None)
    assert int(bgn.sum()) == 0 and torch.equal(fgn, fg0 | bg0) and torch.equal(negn, neg0)
    torch.manual_seed(0)
    edge, dp = torch.randn(1, 8, 8), torch.randn(1, 2, 8, 8)
    out = irn_losses(edge, dp, lab, 3, background=None)
    assert "dp_bg" not in out
    fg_only = affinity_loss(torch.sigmoid(edge), bgn, fgn, negn, 3, has_background=False)
    assert torch.allclose(out["pos_aff"], fg_only["pos_aff"])
    assert torch.allclose(out["total"], (out["pos_aff"] + out["neg_aff"]) / 2 + out["dp_fg"])
    with_bg = irn_losses(edge, dp, lab, 3, background=0)
    assert "dp_bg" in with_bg and not torch.allclose(with_bg["pos_aff"], out["pos_aff"])
