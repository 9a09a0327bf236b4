"""BatchNorm folding for inference: exact on real timm/smp blocks, refused where module order lies."""

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from histowsss.models.fuse import fold_batchnorm_, fuse_for_inference, inference_model


def _randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model


def test_conv_bn_and_timm_bn_act_are_folded_exactly():
    model = _randomise_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                        nn.Conv2d(8, 4, 1, bias=False), BatchNormAct2d(4, act_layer=nn.ReLU6))).eval()
    x = torch.randn(2, 3, 16, 16)
    fused, n = fuse_for_inference(model, x)
    assert n == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.ReLU6) for m in fused.modules())  # BatchNormAct2d's activation is kept
    torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


class _BnOnInput(nn.Module):
    """Children in conv, bn order, but the bn is applied to the input: folding would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_fold_that_changes_the_output_is_refused():
    model = _randomise_bn(_BnOnInput()).eval()
    fused, n = fuse_for_inference(model, torch.randn(1, 3, 8, 8))
    assert n == 0 and fused is model


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm_(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))


def test_timm_backbone_folds_every_batchnorm():
    import timm

    model = _randomise_bn(timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0))
    fused = inference_model(model, "cpu")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ref, got = model(x), fused(x)
    assert (ref - got).abs().max() <= 1e-3 * ref.abs().max()
