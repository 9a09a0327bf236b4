"""The smp segmentation network: offline encoder weights, architectures, losses, sliding-window inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histowsss.data.transforms import Normalizer
from histowsss.engine.inference import sliding_window_probs, tile_starts, window
from histowsss.models.segnet import SegNet, seg_loss


def test_imagenet_weights_reach_the_smp_encoder():
    from histowsss.config import BackboneConfig
    from histowsss.models.backbone import StagedBackbone

    net = SegNet("unet", "tf_efficientnet_lite0", "imagenet", num_classes=2).eval()
    ref = StagedBackbone(BackboneConfig(frozen_stages=0, output_stride=32)).eval()  # the CAM stage's loader
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.net.encoder(x)[-1], ref(x)[0], atol=1e-5)
    assert net.mean == (0.5, 0.5, 0.5)
    assert all(k.startswith("model.") for k in net.net.encoder.state_dict())  # smp's tu- layout


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus"])
def test_architectures_forward_backward(arch):
    net = SegNet(arch, "test_efficientnet", "none", num_classes=3,
                 decoder_channels=[16, 16, 8, 8, 8] if arch == "unet" else [32])
    x = torch.randn(2, 3, 64, 64)
    out = net(x)
    assert out.shape == (2, 3, 64, 64)
    seg_loss(out, torch.randint(0, 3, (2, 64, 64)), "oeem").backward()
    groups = net.param_groups(1e-3, 0.1)
    assert groups[0]["lr"] == pytest.approx(1e-4) and len(groups[0]["params"]) > 0


def test_losses_ignore_pixels_and_oeem_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    ce = seg_loss(logits, target, "ce")
    ign = target.clone()
    ign[:, :4] = 255
    assert float(seg_loss(logits, ign, "ce")) != pytest.approx(float(ce))
    assert float(seg_loss(logits, torch.full_like(target, 255), "oeem")) == 0.0
    # uniform confidence: OEEM weights are all 1, so it equals CE
    flat = torch.zeros(1, 2, 4, 4)
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    assert float(seg_loss(flat, t, "oeem")) == pytest.approx(float(seg_loss(flat, t, "ce")))
    # confident pixels weigh more: the loss is below CE when the hard pixels are the wrong ones
    lg = torch.zeros(1, 2, 1, 4)
    lg[0, 0, 0, :3] = 4.0  # three easy pixels of class 0, one hard one
    t = torch.zeros(1, 1, 4, dtype=torch.long)
    assert float(seg_loss(lg, t, "oeem")) < float(seg_loss(lg, t, "ce"))
    # GCE is bounded by 1/q
    huge = torch.zeros(1, 2, 1, 1)
    huge[0, 1] = 50.0
    assert float(seg_loss(huge, torch.zeros(1, 1, 1, dtype=torch.long), "gce", q=0.7)) <= 1 / 0.7 + 1e-6
    with pytest.raises(ValueError, match="unknown loss"):
        seg_loss(logits, target, "focal")


def test_windows_and_tiles():
    for blend in ("gaussian", "linear", "mean"):
        w = window(32, blend)
        assert w.shape == (32, 32) and w.max() == pytest.approx(1.0) and w.min() > 0
        np.testing.assert_allclose(w, w[::-1, ::-1])
    assert window(32, "gaussian")[0, 0] < window(32, "gaussian")[16, 16]
    assert tile_starts(100, 32, 0.25) == [0, 24, 48, 68]
    assert tile_starts(20, 32, 0.5) == [0]


class _Pointwise(torch.nn.Module):
    """A 1x1 conv: its output at a pixel depends on that pixel only, so tiling must not change anything."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("blend,tta", [("gaussian", "flip"), ("linear", "dihedral"), ("mean", "none")])
def test_sliding_window_matches_whole_image_for_a_pointwise_net(blend, tta):
    model = _Pointwise()
    norm = Normalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    probs = sliding_window_probs(model, img, norm, tile=32, overlap=0.25, blend=blend, tta=tta, batch_size=3,
                                 size_divisor=32)
    with torch.no_grad():
        ref = torch.softmax(model(norm(torch.from_numpy(img)[None])), 1)[0].numpy()
    assert probs.shape == (3, 50, 70)
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    small = img[:20, :25]  # smaller than a tile: padded, then cropped back
    assert sliding_window_probs(model, small, norm, tile=32, tta=tta, size_divisor=32).shape == (3, 20, 25)


def test_multiscale_inference_resizes_back_and_averages():
    from histowsss.engine.inference import multiscale_probs

    model = _Pointwise()
    norm = Normalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    kw = dict(tile=32, overlap=0.25, blend="gaussian", tta="flip", batch_size=4, size_divisor=32)
    img = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    one = sliding_window_probs(model, img, norm, **kw)
    np.testing.assert_array_equal(multiscale_probs(model, img, norm, [1.0], **kw), one)
    ms = multiscale_probs(model, img, norm, [0.5, 1.0, 1.5], **kw)
    assert ms.shape == (3, 50, 70)
    np.testing.assert_allclose(ms.sum(0), 1.0, atol=1e-5)
    assert not np.allclose(ms, one, atol=1e-3)  # the resized copies do count
    # a flat image looks the same at every scale, so a pointwise network gives the same map
    flat = np.full((40, 60, 3), (200, 120, 160), dtype=np.uint8)
    np.testing.assert_allclose(multiscale_probs(model, flat, norm, [0.5, 1.25], **kw),
                               sliding_window_probs(model, flat, norm, **kw), atol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        multiscale_probs(model, img, norm, [0.0], **kw)


def test_seg_ensemble_averages_member_probabilities():
    from torch import nn

    from histowsss.models.segnet import SegEnsemble

    class Fixed(nn.Module):
        def __init__(self, logits, div):
            super().__init__()
            self.logits, self.size_divisor = torch.tensor(logits), div
            self.mean, self.std, self.num_classes = (0.5,) * 3, (0.5,) * 3, 2

        def forward(self, x):
            return self.logits.view(1, 2, 1, 1).expand(x.shape[0], 2, *x.shape[2:])

    ens = SegEnsemble([Fixed([2.0, 0.0], 32), Fixed([0.0, 3.0], 16)])
    p = torch.softmax(ens(torch.zeros(1, 3, 4, 4)), 1)[0, :, 0, 0]
    want = (torch.softmax(torch.tensor([2.0, 0.0]), 0) + torch.softmax(torch.tensor([0.0, 3.0]), 0)) / 2
    assert torch.allclose(p, want, atol=1e-6) and ens.size_divisor == 32
    other = Fixed([0.0, 1.0], 32)
    other.mean = (0.1, 0.2, 0.3)
    with pytest.raises(ValueError, match="normalisation"):
        SegEnsemble([Fixed([1.0, 0.0], 32), other])


class _LayoutSpy(torch.nn.Module):
    """A pointwise net that records, per call, whether it ran under CPU bfloat16 autocast and got channels-last input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((torch.is_autocast_enabled("cpu"), x.is_contiguous(memory_format=torch.channels_last)))
        return self.conv(x)


def test_cpu_amp_and_channels_last_tiles():
    """cpu_amp: tiles go through the network under bfloat16 autocast, probabilities stay float32 and close to the
    float32 ones; channels_last (the default) changes the layout only, not the result."""
    spy = _LayoutSpy()
    norm = Normalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img = np.random.default_rng(2).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    kw = dict(tile=32, overlap=0.25, tta="flip", batch_size=4, size_divisor=32)
    fp = sliding_window_probs(spy, img, norm, **kw)
    assert spy.seen and all(not amp and cl for amp, cl in spy.seen)
    spy.seen.clear()
    bf = sliding_window_probs(spy, img, norm, cpu_amp=True, **kw)
    assert spy.seen and all(amp for amp, _ in spy.seen)
    assert bf.dtype == np.float32 and not np.array_equal(bf, fp)
    np.testing.assert_allclose(bf, fp, atol=3e-2)
    spy.seen.clear()
    nchw = sliding_window_probs(spy, img, norm, channels_last=False, **kw)
    assert spy.seen and all(not cl for _, cl in spy.seen)
    np.testing.assert_allclose(nchw, fp, atol=1e-6)
    spy.seen.clear()
    sliding_window_probs(spy, img, norm, amp=True, **kw)  # amp is CUDA's switch: no autocast on the CPU
    assert not any(amp for amp, _ in spy.seen)
