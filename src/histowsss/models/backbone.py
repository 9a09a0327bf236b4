"""timm backbones (CNNs and vision transformers) as an ordered list of units, so a frozen trunk can be cached and the
tail trained."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
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
        model = _create(cfg)
        self.mean, self.std = _load_weights(model, cfg, load_pretrained)
        self.vit: TokenGrid | None = None
        if isinstance(model, VisionTransformer):
            self._split_vit(model, cfg)
            return
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

    def _split_vit(self, model: VisionTransformer, cfg: BackboneConfig) -> None:
        """Units: the token embedding, then one per block; four feature levels (after blocks d/4, d/2, 3d/4, d) as
        maps on the 16-px grid, each through the final norm. Frozen whole or trained whole: a part-frozen ViT would
        continue from cached maps that lost the class / register tokens."""
        depth = len(model.blocks)
        if depth < 1:
            raise WeightsError(f"{cfg.name}: a vision transformer without blocks")
        # the final norm; ViTs that pool by average keep it as fc_norm (applied here to every token)
        norm = model.fc_norm if isinstance(model.norm, nn.Identity) else model.norm
        self.vit = TokenGrid(model.num_prefix_tokens, norm)
        self.unit_names = ["embed"] + [f"blocks.{i}" for i in range(depth)]
        self.units = nn.ModuleList([TokenEmbed(model), *model.blocks])
        ends = sorted({max(1, round(depth * q)) for q in (0.25, 0.5, 0.75, 1.0)})
        self.features = [FeatureSpec(e, model.embed_dim, GRID) for e in ends]
        if 0 < cfg.frozen_stages < len(self.features):
            raise WeightsError(f"backbone.frozen_stages {cfg.frozen_stages}: a vision transformer ({cfg.name}) is "
                               f"frozen whole (frozen_stages >= {len(self.features)}) or trained whole "
                               "(frozen_stages: 0)")
        self.trunk_units = 0 if cfg.frozen_stages == 0 else len(self.units)
        if self.trunk_units:
            self.requires_grad_(False)

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
        as_map: Callable[[torch.Tensor], torch.Tensor] = lambda t: t  # noqa: E731
        if self.vit is not None:  # tokens between units, maps (B, C, ceil(H/16), ceil(W/16)) out
            if start >= stop:
                return x, out  # a cached map: nothing to run
            if start != 0:
                raise RuntimeError("a vision transformer runs from the image (unit 0) or not at all")
            grid = (math.ceil(x.shape[2] / GRID), math.ceil(x.shape[3] / GRID))
            as_map = partial(self.vit.to_map, grid=grid)
        for u in range(start, stop):
            with torch.no_grad() if u < self.trunk_units else nullcontext():
                x = self.units[u](x)
            if u in wanted:
                out[wanted[u]] = as_map(x)
        return as_map(x), out

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the frozen trunk (what the feature cache stores)."""
        with torch.no_grad():
            return self.forward(x, 0, self.trunk_units)[0]

    def level_of_unit(self, unit: int) -> int | None:
        for i, f in enumerate(self.features):
            if f.unit == unit:
                return i
        return None


GRID = 16  # vision transformers' feature grid in input pixels, whatever their patch size
MLP_LAYERS = ("Mlp", "SwiGLUPacked", "SwiGLU", "GluMlp")  # timm.layers classes model_kwargs may name


class TokenEmbed(nn.Module):
    """A ViT's patch embedding, class / register tokens and position embedding (resampled to the image's grid).

    The image is padded at the bottom / right to a multiple of 16 px and, for another patch size p, resized by
    p / 16, so that one token covers 16 input pixels (the CNN backbones' output stride): a patch-14 foundation model
    sees the image at 0.875 x its scale."""

    def __init__(self, model: VisionTransformer):
        super().__init__()
        ph, pw = model.patch_embed.patch_size
        if ph != pw:
            raise WeightsError(f"non-square patches {ph}x{pw} are not supported")
        self.patch = ph
        self.patch_embed, self.pos_drop, self.patch_drop, self.norm_pre = (
            model.patch_embed, model.pos_drop, model.patch_drop, model.norm_pre)
        self.cls_token, self.reg_token, self.pos_embed = model.cls_token, model.reg_token, model.pos_embed
        self.no_embed_class, self.num_prefix_tokens = model.no_embed_class, model.num_prefix_tokens
        if self.pos_embed is None:
            raise WeightsError("vision transformers without an absolute position embedding (RoPE) are not supported")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = math.ceil(x.shape[2] / GRID), math.ceil(x.shape[3] / GRID)
        x = F.pad(x, (0, w * GRID - x.shape[3], 0, h * GRID - x.shape[2]))
        if self.patch != GRID:
            x = F.interpolate(x, size=(h * self.patch, w * self.patch), mode="bilinear", align_corners=False,
                              antialias=self.patch < GRID)
        x = self.patch_embed(x)  # (B, h, w, C): built with dynamic_img_size
        b, c = x.shape[0], x.shape[-1]
        pos = resample_abs_pos_embed(self.pos_embed, new_size=(h, w), old_size=self.patch_embed.grid_size,
                                     num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens)
        x = x.reshape(b, h * w, c)
        prefix = [t.expand(b, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:
            x = torch.cat(prefix + [x + pos], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos
        return self.norm_pre(self.patch_drop(self.pos_drop(x)))


class TokenGrid(nn.Module):
    """Tokens (B, prefix + h*w, C) -> normed feature map (B, C, h, w)."""

    def __init__(self, num_prefix_tokens: int, norm: nn.Module):
        super().__init__()
        self.num_prefix_tokens, self.norm = num_prefix_tokens, norm

    def to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        t = self.norm(tokens[:, self.num_prefix_tokens:])
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)


def timm_kwargs(model_kwargs: dict, where: str) -> dict:
    """A config's extra ``timm.create_model`` arguments as timm takes them: those histowsss sets itself dropped (the
    config allows them only with histowsss's values), ``mlp_layer`` from its name in a fixed list (config text is
    never code)."""
    extra = {k: v for k, v in model_kwargs.items() if k not in ("num_classes", "pretrained", "dynamic_img_size")}
    if isinstance(extra.get("mlp_layer"), str):
        if extra["mlp_layer"] not in MLP_LAYERS:
            raise WeightsError(f"{where} mlp_layer {extra['mlp_layer']!r}: give one of " + ", ".join(MLP_LAYERS))
        extra["mlp_layer"] = getattr(timm.layers, extra["mlp_layer"])
    return extra


def check_backbone(cfg: BackboneConfig) -> int:
    """Build the backbone ``cfg`` describes on the meta device (no memory, no weights) and check that its weights
    file fits it: the WeightsError train_cam would raise (unknown name, refused model_kwargs, a ViT off its token
    grid or without backbone.mean / std for a file, a file of another architecture), before any step runs
    (``histowsss run`` calls this when it plans a step that builds the backbone). Returns the largest stride of its
    feature levels (train_irn's crops are a multiple of it)."""
    with torch.device("meta"):
        staged = StagedBackbone(cfg, load_pretrained=False)
        model = _create(cfg)
    if cfg.weights not in ("imagenet", "none"):
        load_into(model, read_state_dict(Path(cfg.weights).expanduser(), shapes_only=True), cfg.weights,
                  check_only=True)
    return max(s.reduction for s in staged.features)


def _create(cfg: BackboneConfig) -> nn.Module:
    """The timm model (no head), at ``cfg.output_stride``; a vision transformer with a resizable token grid."""
    kwargs = {"output_stride": cfg.output_stride} if cfg.output_stride != 32 else {}
    extra = timm_kwargs(cfg.model_kwargs, "backbone.model_kwargs")
    try:
        model = timm.create_model(cfg.name, pretrained=False, num_classes=0, **kwargs, **extra)
    except TypeError as e:
        first = e  # a model without an output_stride argument: a vision transformer, or an error below
    except Exception as e:  # an unknown name (RuntimeError), arguments timm's asserts refuse
        raise WeightsError(f"timm cannot build {cfg.name!r}: {type(e).__name__} {e}"
                           + (f" (backbone.model_kwargs {cfg.model_kwargs})" if cfg.model_kwargs else "")) from None
    else:
        if not isinstance(model, VisionTransformer):
            return model
        first = None  # a ViT built without output_stride (backbone.output_stride 32): refused below
    model, why = None, f"{first}" + (f" (backbone.output_stride {cfg.output_stride})"
                                     if "output_stride" in str(first) else "")
    try:
        model = timm.create_model(cfg.name, pretrained=False, num_classes=0, dynamic_img_size=True, **extra)
    except Exception as e:  # a model that takes no output_stride, failing for another reason: that one is said
        if not (isinstance(e, TypeError) and "dynamic_img_size" in str(e)):
            why = f"{type(e).__name__} {e}"
    if model is not None and not isinstance(model, VisionTransformer):
        why = (f"{cfg.name} builds {type(model).__name__}, not timm's VisionTransformer (other transformer families, "
               "e.g. RoPE ViTs such as EVA, are not supported)")
    if not isinstance(model, VisionTransformer):
        raise WeightsError(f"timm cannot build {cfg.name!r}: {why}"
                           + (f" (backbone.model_kwargs {cfg.model_kwargs})" if cfg.model_kwargs else "")
                           + "; backbones are timm CNNs that take an output_stride, or timm VisionTransformer models")
    if cfg.output_stride != GRID:
        raise WeightsError(f"{cfg.name} is a vision transformer: its features are on a {GRID}-px grid; set "
                           f"backbone.output_stride: {GRID}")
    if getattr(model, "dist_token", None) is not None:
        raise WeightsError(f"{cfg.name}: distilled vision transformers (a distillation token) are not supported; "
                           "use the model without distillation")
    return model


def _load_weights(model: nn.Module, cfg: BackboneConfig,
                  load: bool = True) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Load ``cfg.weights`` into ``model`` (unless ``load`` is False); returns the input normalisation (mean, std)."""
    w = cfg.weights
    if w == "none":
        return cfg.mean or (0.5, 0.5, 0.5), cfg.std or (0.5, 0.5, 0.5)
    if w == "imagenet":
        path = packaged_weights_path(cfg.name) if load else None  # its error names the weight packages
        spec = PACKAGED_WEIGHTS[cfg.name]
        if path is not None:
            load_into(model, read_state_dict(path), str(path))
        return cfg.mean or spec.mean, cfg.std or spec.std
    vit = isinstance(model, VisionTransformer)
    if vit and (cfg.mean is None or cfg.std is None):
        raise WeightsError(f"{w}: set backbone.mean and backbone.std to the normalisation these weights were trained "
                           "with (their model card; UNI: mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]); "
                           f"timm's default for {cfg.name} need not be it")
    if load:
        path = Path(w).expanduser()
        if not path.exists():
            raise WeightsError(f"{w}: backbone.weights not found (a relative path is read from the current folder, "
                               f"{Path.cwd()}); train_cam, train_irn and make_sem_seg_labels build the backbone from "
                               "it (the finished CAM classifier, make_cam and predict do not need it)")
        missing = load_into(model, read_state_dict(path), w)
        if vit and not isinstance(model.norm, nn.Identity) and any(k.startswith("norm.") for k in missing):
            raise WeightsError(f"{w}: no final norm (norm.weight / norm.bias), which every feature level of "
                               f"{cfg.name} goes through; these weights are incomplete or of another architecture")
    pc = getattr(model, "pretrained_cfg", {}) or {}
    return (tuple(cfg.mean or pc.get("mean", (0.485, 0.456, 0.406))),
            tuple(cfg.std or pc.get("std", (0.229, 0.224, 0.225))))
