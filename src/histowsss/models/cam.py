"""The plain CAM classifier: backbone -> global average pooling (or top-k pooling) -> 1x1 classifier (no bias)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from histowsss.config import BackboneConfig
from histowsss.models.backbone import StagedBackbone
from histowsss.models.registry import register_cam_network


@register_cam_network("cam")
class CamNet(nn.Module):
    """GAP + 1x1 classifier on the last (output-stride 16) feature map; CAMs are the classifier applied per cell."""

    def __init__(self, backbone: BackboneConfig, num_outputs: int, head_layers: int = 1, head_channels: int = 256,
                 dropout: float = 0.1, load_pretrained: bool = True, pooling: str = "gap", topk_fraction: float = 0.25,
                 **_: object):
        super().__init__()
        self.pooling, self.topk_fraction = pooling, topk_fraction
        self.backbone = StagedBackbone(backbone, load_pretrained)
        self.head = make_head(self.backbone.out_channels, head_layers, head_channels)
        out_ch = head_channels if head_layers > 0 else self.backbone.out_channels
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(out_ch, num_outputs, 1, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.01)

    @property
    def trunk_units(self) -> int:
        return self.backbone.trunk_units

    def features(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Last feature map, running the backbone from unit ``start`` (``x`` is then a cached trunk output)."""
        return self.head(self.backbone(x, start)[0])

    def forward(self, x: torch.Tensor, start: int = 0, **_: object) -> dict[str, torch.Tensor]:
        """Image-level logits (B, K) and the class activation maps (B, K, h, w) before ReLU."""
        f = self.features(x, start)
        cam = self.classifier(self.dropout(f))
        return {"logits": pool_cam(cam, self.pooling, self.topk_fraction), "cam": cam}

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU'd class activation maps for a batch of normalised images."""
        return F.relu(self.forward(x)["cam"])

    def param_groups(self, lr: float, backbone_mult: float) -> list[dict]:
        """Optimizer groups: trainable backbone units at lr * mult, new layers at lr."""
        bb = [p for p in self.backbone.parameters() if p.requires_grad]
        new = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
        groups = [{"params": bb, "lr": lr * backbone_mult}, {"params": new, "lr": lr}]
        return [g for g in groups if g["params"]]


def pool_cam(cam: torch.Tensor, pooling: str = "gap", topk_fraction: float = 0.25) -> torch.Tensor:
    """Image-level logits (B, K) of class maps (B, K, h, w): their mean (``gap``), or the mean of each map's
    ``topk_fraction`` highest cells (at least one; ``topk``). In float32: under bfloat16 autocast (make_cam.cpu_amp)
    the map is bfloat16, the logits should not be."""
    c = cam.float()
    if pooling == "gap":
        return c.mean(dim=(2, 3))
    if pooling != "topk":
        raise ValueError(f"pooling must be 'gap' or 'topk', got {pooling!r}")
    flat = c.flatten(2)
    k = max(1, math.ceil(topk_fraction * flat.shape[-1]))
    return flat.topk(k, dim=-1).values.mean(dim=-1)


def make_head(in_ch: int, layers: int, channels: int) -> nn.Module:
    """``layers`` x (3x3 conv, BN, ReLU) adapting (possibly frozen) backbone features to the task."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Conv2d(in_ch if i == 0 else channels, channels, 3, padding=1, bias=False),
                 nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*mods)
