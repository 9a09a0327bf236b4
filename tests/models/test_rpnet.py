"""RPNet prototype maths on tiny tensors."""

import torch

from histowsss.config import BackboneConfig
from histowsss.models.rpnet import RPNet, cosine_map, foreground_map, gaussian_smooth, masked_average, part_mask


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
