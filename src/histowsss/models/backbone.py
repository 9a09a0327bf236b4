"""timm backbones as an ordered list of stages, so a frozen trunk can be cached and the tail trained."""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn

from histowsss.config import BackboneConfig
from histowsss.models.weights import PACKAGED_WEIGHTS, WeightsError, load_into, packaged_weights_path, read_state_dict

_HEAD_NAMES = {"conv_head", "bn2", "global_pool", "fc", "classifier", "head", "head_drop", "norm_pre", "fc_norm"}


@dataclass(frozen=True)
class FeatureSpec:
    """A feature level: index of the unit producing it, channels and stride."""

    unit: int
    channels: int
    reduction: int


class StagedBackbone(nn.Module):
    """A timm model split into sequential units; ``forward(x, start, stop)`` runs a range of them.

    ``features`` lists the feature levels (timm's feature_info). ``trunk_units`` is the number of units
    that are frozen (run in eval mode, no gradients) and may be cached.
    """

    def __init__(self, cfg: BackboneConfig, load_pretrained: bool = True):
        """``load_pretrained=False``: skip reading ``cfg.weights`` (a trained checkpoint will replace every weight),
        keeping the normalisation those weights imply."""
        super().__init__()
        self.cfg = cfg
        kwargs = {"output_stride": cfg.output_stride} if cfg.output_stride != 32 else {}
        try:
            model = timm.create_model(cfg.name, pretrained=False, num_classes=0, **kwargs)
        except (RuntimeError, TypeError) as e:  # TypeError: a model without an output_stride argument
            raise WeightsError(f"timm cannot build {cfg.name!r}: {e}"
                               + (f" (backbone.output_stride {cfg.output_stride})" if kwargs else "")) from None
        self.mean, self.std = _load_weights(model, cfg, load_pretrained)
        info = model.feature_info
        names = [f["module"] for f in info]
        units: list[tuple[str, nn.Module]] = []
        for name, child in model.named_children():
            if name in _HEAD_NAMES:
                continue
            if isinstance(child, nn.Sequential) and any(n.startswith(name + ".") for n in names):
                units.extend((f"{name}.{sub}", m) for sub, m in child.named_children())
            else:
                units.append((name, child))
        unit_names = [n for n, _ in units]
        specs = []
        for f in info:
            if f["module"] not in unit_names:
                raise WeightsError(f"{cfg.name}: feature module {f['module']} is not a top-level unit; "
                                   "this architecture is not supported by StagedBackbone")
            specs.append(FeatureSpec(unit_names.index(f["module"]), f["num_chs"], f["reduction"]))
        last = specs[-1].unit
        self.unit_names = unit_names[: last + 1]
        self.units = nn.ModuleList([m for _, m in units[: last + 1]])
        self.features = specs
        self.trunk_units = 0 if cfg.frozen_stages <= 0 else specs[min(cfg.frozen_stages, len(specs)) - 1].unit + 1
        for m in self.units[: self.trunk_units]:
            m.requires_grad_(False)

    @property
    def out_channels(self) -> int:
        return self.features[-1].channels

    def train(self, mode: bool = True) -> "StagedBackbone":
        super().train(mode)
        for m in self.units[: self.trunk_units]:
            m.eval()  # frozen BN statistics
        return self

    def forward(self, x: torch.Tensor, start: int = 0, stop: int | None = None,
                collect: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run units ``start:stop``; return the last output and features of the ``collect`` levels in range."""
        stop = len(self.units) if stop is None else stop
        wanted = {self.features[i].unit: i for i in collect}
        out: dict[int, torch.Tensor] = {}
        for u in range(start, stop):
            if u < self.trunk_units:
                with torch.no_grad():
                    x = self.units[u](x)
            else:
                x = self.units[u](x)
            if u in wanted:
                out[wanted[u]] = x
        return x, out

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the frozen trunk (what the feature cache stores)."""
        with torch.no_grad():
            return self.forward(x, 0, self.trunk_units)[0]

    def level_of_unit(self, unit: int) -> int | None:
        for i, f in enumerate(self.features):
            if f.unit == unit:
                return i
        return None


def _load_weights(model: nn.Module, cfg: BackboneConfig,
                  load: bool = True) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Load ``cfg.weights`` into ``model`` (unless ``load`` is False); returns the input normalisation (mean, std)."""
    w = cfg.weights
    if w == "none":
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if w == "imagenet":
        path = packaged_weights_path(cfg.name) if load else None  # its error names the weight packages
        spec = PACKAGED_WEIGHTS[cfg.name]
        if path is not None:
            load_into(model, read_state_dict(path), str(path))
        return spec.mean, spec.std
    if load:
        load_into(model, read_state_dict(w), w)
    pc = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(pc.get("mean", (0.485, 0.456, 0.406))), tuple(pc.get("std", (0.229, 0.224, 0.225)))
