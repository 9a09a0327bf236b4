"""The final segmentation network: a segmentation-models-pytorch U-Net / DeepLabV3+ on a timm encoder.

smp's "timm universal" encoder (``encoder_name="tu-<timm name>"``) wraps ``timm.create_model(...,
features_only=True)`` as ``net.encoder.model``; its state-dict keys are timm's (``conv_stem.weight``,
``blocks.0.0...``) without the classifier head. smp is always built with ``encoder_weights=None`` (its default
downloads); ImageNet weights then come from the offline packages of :mod:`histowsss.models.weights`, loaded into
``net.encoder.model`` with :func:`load_into` (by name, or by order for the lukemelas-layout lite0 files).

Also here: :class:`SegEnsemble` (a seed ensemble's averaged probabilities) and the pseudo-label-noise-robust
losses (:func:`seg_loss`), see docs/segmentation.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from histowsss.models.weights import PACKAGED_WEIGHTS, WeightsError, load_into, packaged_weights_path, read_state_dict

IGNORE = 255
ARCHITECTURES = {"unet": "Unet", "deeplabv3plus": "DeepLabV3Plus"}


class SegNet(nn.Module):
    """smp network + the normalisation its encoder weights expect; ``forward`` returns logits (B, C, H, W).

    Inputs must have sides divisible by ``size_divisor`` (32 for U-Net, 16 for DeepLabV3+).
    """

    def __init__(self, architecture: str, encoder: str, encoder_weights: str, num_classes: int,
                 decoder_channels: list[int] | None = None):
        super().__init__()
        import segmentation_models_pytorch as smp

        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        kwargs: dict = {}
        if decoder_channels:
            if architecture == "unet":
                if len(decoder_channels) != 5:
                    raise ValueError(f"train_seg.decoder_channels for unet needs 5 values, got {decoder_channels}")
                kwargs["decoder_channels"] = tuple(decoder_channels)
            else:
                kwargs["decoder_channels"] = int(decoder_channels[0])
        try:
            self.net = getattr(smp, ARCHITECTURES[architecture])(
                encoder_name=f"tu-{encoder}", encoder_weights=None, classes=num_classes, **kwargs)
        except (RuntimeError, KeyError, ValueError) as e:
            raise WeightsError(f"smp cannot build {architecture} on timm encoder {encoder!r}: {e}") from None
        self.architecture, self.encoder_name, self.num_classes = architecture, encoder, num_classes
        self.mean, self.std = load_encoder_weights(self.net.encoder.model, encoder, encoder_weights)
        self.size_divisor = 32 if architecture == "unet" else 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def param_groups(self, lr: float, encoder_lr_mult: float) -> list[dict]:
        """Encoder at ``lr * encoder_lr_mult``, decoder and head at ``lr``."""
        enc = [p for p in self.net.encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in enc}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": enc, "lr": lr * encoder_lr_mult}, {"params": rest, "lr": lr}]


class SegEnsemble(nn.Module):
    """Networks of one architecture whose class probabilities are averaged (a seed ensemble, ``train_seg.members``).

    ``forward`` returns the log of the members' mean softmax, so the softmax that inference applies to "logits"
    gives exactly the averaged probabilities (and their argmax the ensemble's prediction).
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("SegEnsemble needs at least one member")
        first = members[0]
        norms = {(tuple(m.mean), tuple(m.std)) for m in members}
        if len(norms) != 1:
            raise ValueError(f"ensemble members expect different input normalisations: {sorted(norms)}")
        self.members = nn.ModuleList(members)
        self.mean, self.std = first.mean, first.std
        self.size_divisor = math.lcm(*(int(m.size_divisor) for m in members))
        self.num_classes = first.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([F.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()


def load_encoder_weights(model: nn.Module, encoder: str, weights: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Load 'imagenet' (offline package), 'none' or a local file into smp's timm encoder; returns (mean, std)."""
    if weights == "none":
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if weights == "imagenet":
        path = packaged_weights_path(encoder)
        load_into(model, read_state_dict(path), str(path))
        spec = PACKAGED_WEIGHTS[encoder]
        return spec.mean, spec.std
    load_into(model, read_state_dict(weights), weights)
    pc = getattr(model, "pretrained_cfg", None) or {}
    return tuple(pc.get("mean", (0.485, 0.456, 0.406))), tuple(pc.get("std", (0.229, 0.224, 0.225)))


def build_segnet(train_seg, num_classes: int) -> SegNet:
    """A SegNet from a :class:`histowsss.config.TrainSegConfig`."""
    return SegNet(train_seg.architecture, train_seg.encoder, train_seg.encoder_weights, num_classes,
                  train_seg.decoder_channels)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce", q: float = 0.7,
             ignore_index: int = IGNORE) -> torch.Tensor:
    """Pixel loss over non-ignored pixels of (B, C, H, W) logits and (B, H, W) int64 targets.

    * ``ce``: cross-entropy.
    * ``oeem``: online easy-example mining (Li et al., MICCAI 2022, for gland pseudo-masks): each pixel's CE is
      weighted by the network's own (detached) probability of its pseudo-label, normalised to mean 1 within each
      pseudo-class of the batch. Confident ("easy") pixels, which are mostly correct pseudo-labels, dominate;
      the per-class normalisation keeps every class's total weight, so a class is not down-weighted as a whole.
    * ``gce``: generalised cross-entropy (Zhang & Sabuncu 2018), ``(1 - p^q) / q``: between CE (q -> 0) and MAE
      (q = 1), bounded, so confidently wrong labels cannot dominate the gradient.
    """
    valid = target != ignore_index
    n = valid.sum()
    if n == 0:
        return logits.sum() * 0.0
    logits = logits.float()
    safe = torch.where(valid, target, torch.zeros_like(target))
    if kind == "ce":
        return F.cross_entropy(logits, target, ignore_index=ignore_index)
    logp = F.log_softmax(logits, dim=1).gather(1, safe[:, None])[:, 0]
    if kind == "gce":
        loss = (1.0 - torch.exp(q * logp)) / q
        return loss[valid].mean()
    if kind == "oeem":
        ce = -logp
        with torch.no_grad():
            p = logp.exp()
            w = torch.zeros_like(p)
            for c in torch.unique(safe[valid]):
                m = valid & (safe == c)
                w[m] = p[m] / p[m].mean().clamp_min(1e-6)
        return (ce * w)[valid].sum() / n
    raise ValueError(f"unknown loss {kind!r}; choose oeem, gce or ce")
