"""RPNet prototype maths on tiny tensors."""

import torch

from histowsss.config import BackboneConfig
from histowsss.models.rpnet import (RPNet, batch_foreground_maps, batch_part_masks, cosine_map, foreground_map,
                                   gaussian_smooth, masked_average, part_mask)


def _features(region_value: torch.Tensor, bg_value: torch.Tensor, region: tuple[slice, slice], size: int = 8):
    f = bg_value[:, None, None].repeat(1, size, size).clone()
    f[:, region[0], region[1]] = region_value[:, None, None]
    return f


def test_masked_average_and_cosine():
    f = torch.zeros(3, 4, 4)
    f[0, :2] = 1.0
    f[1, 2:] = 1.0
    m = torch.zeros(4, 4)
    m[:2] = 1
    p = masked_average(f, m)
    assert torch.allclose(p, torch.tensor([1.0, 0.0, 0.0]), atol=1e-4)
    sim = cosine_map(f, p[None])[0]
    assert torch.allclose(sim[:2], torch.ones(2, 4), atol=1e-4)
    assert torch.allclose(sim[2:], torch.zeros(2, 4), atol=1e-4)


def test_region_missing_in_query_is_raised_by_partner_prototype():
    """The query has two regions of the class (A and B) but its seeds cover only A. B looks like the
    partner's seeded region. FM must be high on B (re-activated) and low on background."""
    a, b, bg = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0.0, 1, 0, 0]), torch.tensor([0.0, 0, 1, 0])
    q = _features(a, bg, (slice(0, 3), slice(0, 3)))
    q[:, 5:8, 5:8] = b[:, None, None]  # region B, not seeded in the query
    seeds_q = torch.zeros(8, 8)
    seeds_q[0:3, 0:3] = 1
    partner = _features(b, bg, (slice(2, 6), slice(2, 6)))
    seeds_p = torch.zeros(8, 8)
    seeds_p[2:6, 2:6] = 1
    mid_q = torch.nn.functional.interpolate(q[None], scale_factor=2)[0]
    mid_p = torch.nn.functional.interpolate(partner[None], scale_factor=2)[0]
    fm_self_only = foreground_map(q, mid_q, [seeds_q], [torch.zeros(8, 8)], partner, mid_p, sigma=0.5)
    fm = foreground_map(q, mid_q, [seeds_q], [seeds_p], partner, mid_p, sigma=0.5)
    assert fm_self_only[6, 6] < 0.2  # B not activated from the query's own prototypes
    assert fm[6, 6] > 0.8  # ... but raised by the partner's prototype
    assert fm[1, 1] > 0.8  # A stays active
    assert fm[4, 0] < 0.2  # background stays low


def test_part_mask_keeps_a_part():
    seed = torch.ones(6, 6)
    g = torch.Generator().manual_seed(0)
    part = part_mask(seed, g)
    assert 0 < part.sum() < seed.sum()


def test_gaussian_smooth_keeps_constant_maps():
    x = torch.full((2, 5, 5), 0.7)
    assert torch.allclose(gaussian_smooth(x, 1.0), x, atol=1e-6)


def test_rpnet_forward_gives_aux_loss_on_pairs():
    torch.manual_seed(0)
    net = RPNet(BackboneConfig(name="tf_efficientnet_lite0", weights="none", frozen_stages=0), num_outputs=2,
                head_channels=16, options={"seed_threshold": 0.3})
    net.train()
    x = torch.randn(4, 3, 64, 64)
    t = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    out = net(x, start=0, targets=t)
    assert out["logits"].shape == (4, 2) and out["cam"].shape[:2] == (4, 2)
    assert torch.isfinite(out["aux_loss"]) and out["aux_loss"].requires_grad
    out["aux_loss"].backward()
    assert net.mid_proj.weight.grad is not None


def test_rpnet_rejects_unknown_options():
    import pytest

    with pytest.raises(ValueError, match="unknown train_cam.rpnet option"):
        RPNet(BackboneConfig(weights="none"), 1, options={"seed_treshold": 0.3})


def _reference_fm(fl, fmid, masks_self, masks_pair, fl_pair, fmid_pair, sigma):
    """Per-image loop over explicit (whole, part) seeds: the prototype maths written out."""
    protos = []
    for feat_l, feat_m, masks in ((fl, fmid, masks_self), (fl_pair, fmid_pair, masks_pair)):
        if masks[0].sum() <= 0:
            continue
        for s in masks:
            protos.append(masked_average(feat_l, s))
            protos.append(masked_average(feat_m, torch.nn.functional.interpolate(s[None, None], size=feat_m.shape[1:],
                                                                                 mode="nearest")[0, 0]))
    if not protos:
        return torch.zeros_like(fl[0])
    sim = cosine_map(fl, torch.stack(protos)).clamp(min=0).max(dim=0).values
    return gaussian_smooth(sim[None], sigma)[0].clamp(0, 1)


def test_batched_foreground_maps_match_the_per_image_maths():
    g = torch.Generator().manual_seed(3)
    b, k, c, h = 4, 2, 6, 8
    f = torch.randn(b, c, h, h, generator=g)
    fmid = torch.randn(b, c, 2 * h, 2 * h, generator=g)
    seeds = (torch.rand(b, k, h, h, generator=g) > 0.6).float()
    seeds[2, 1] = 0  # an image whose class has no seed: only the partner's prototypes count
    parts = batch_part_masks(seeds, g)
    partner = torch.tensor([1, 0, 3, 2])
    got = batch_foreground_maps(f, fmid, seeds, parts, partner, sigma=1.0)
    for i in range(b):
        j = int(partner[i])
        for cls in range(k):
            ref = _reference_fm(f[i], fmid[i], [seeds[i, cls], parts[i, cls]], [seeds[j, cls], parts[j, cls]],
                                f[j], fmid[j], 1.0)
            assert torch.allclose(got[i, cls], ref, atol=1e-5), (i, cls)


def test_batch_part_masks_drop_a_window_or_keep_the_seed():
    seeds = torch.zeros(2, 1, 6, 6)
    seeds[0, 0] = 1
    seeds[1, 0, 0, 0] = 1  # a one-cell seed: dropping may empty it, then the seed is kept
    parts = batch_part_masks(seeds, torch.Generator().manual_seed(0))
    assert 0 < parts[0, 0].sum() < seeds[0, 0].sum()
    assert parts[1, 0].sum() == 1
    assert torch.all(parts <= seeds)


def test_prototype_loss_ignores_pairs_of_different_classes():
    torch.manual_seed(0)
    net = RPNet(BackboneConfig(name="tf_efficientnet_lite0", weights="none", frozen_stages=0), num_outputs=2,
                head_channels=16)
    f = torch.randn(2, 16, 4, 4)
    cam = torch.randn(2, 2, 4, 4, requires_grad=True)
    fmid = torch.randn(2, 16, 8, 8)
    mixed = net.prototype_loss(f, fmid, cam, torch.tensor([[1.0, 0], [0, 1.0]]))
    assert float(mixed.detach()) == 0.0  # the pair shares no class: nothing to mine
    same = net.prototype_loss(f, fmid, cam, torch.tensor([[1.0, 0], [1.0, 0]]))
    assert float(same.detach()) > 0 and same.requires_grad


def test_cam_logits_are_averaged_in_float32_under_bfloat16_autocast():
    """make_cam.cpu_amp: the maps come out bfloat16, the image logits (stored probabilities, the classifier gate)
    are their mean taken in float32, not a bfloat16-rounded one."""
    from histowsss.models.cam import CamNet

    for cls in (CamNet, RPNet):
        net = cls(BackboneConfig(name="tf_efficientnet_lite0", weights="none", frozen_stages=0), num_outputs=2,
                  head_channels=16).eval()
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        assert out["cam"].dtype == torch.bfloat16 and out["logits"].dtype == torch.float32
        assert torch.equal(out["logits"], out["cam"].float().mean(dim=(2, 3)))
