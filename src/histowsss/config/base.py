"""The base of every config section (unknown keys refused, no booleans for numbers), the config error, and
the checks that several sections share (normalisation, timm arguments, no model-hub names)."""

from __future__ import annotations

import re
import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says which key and how to fix it."""


class Strict(BaseModel):
    """Base model: unknown keys are rejected; a number where text is expected (a split or class named 1 in YAML)
    is taken as its text, and a boolean where a number is expected (``epochs: true``) is refused instead of being
    read as 1."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                if name in data and _bool_for_number(value, field.annotation):
                    raise ValueError(f"{name}: {str(value).lower()} is a boolean, but {name} is a number"
                                     if isinstance(value, bool) else
                                     f"{name}: {value!r} holds a boolean (YAML reads true/false, yes/no, on/off so) "
                                     f"where {name} takes numbers")
        return data


def _bool_for_number(value: Any, annotation: Any) -> bool:
    """True when ``value`` puts a boolean where ``annotation`` takes a number: the field itself (``int``, ``float``,
    a union holding one, e.g. ``float | Literal["eval_cam"]``) or the items of a list / tuple of them."""
    if isinstance(value, bool):
        return _takes_number(annotation)
    if isinstance(value, (list, tuple)):
        origin, args = get_origin(annotation), get_args(annotation)
        if origin in (Union, types.UnionType):
            return any(_bool_for_number(value, a) for a in args if get_origin(a) in (list, tuple))
        if origin in (list, tuple) and args:
            items = args if origin is tuple and Ellipsis not in args else (args[0],) * len(value)
            return any(_bool_for_number(v, a) for v, a in zip(value, items))
    return False


def _takes_number(annotation: Any) -> bool:
    """int or float, or a union holding one (``int | None``, ``float | Literal[...]``)."""
    if annotation in (int, float):
        return True
    return get_origin(annotation) in (Union, types.UnionType) and any(a in (int, float) for a in get_args(annotation))


_EXP_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
# timm.create_model arguments histowsss sets itself; a model card's num_classes: 0 / pretrained: false /
# dynamic_img_size (either value) agree with it
_AGREEING_KWARGS = {"num_classes": 0, "pretrained": False, "dynamic_img_size": True}


def yaml_floats(v: Any) -> Any:
    """``1e-5`` as model cards write it is text to YAML 1.1 (which wants ``1.0e-5``): read it as the number."""
    if isinstance(v, dict):
        return {k: float(x) if isinstance(x, str) and _EXP_FLOAT.fullmatch(x.strip()) else x for k, x in v.items()}
    return v


def check_not_hub(key: str, name: str, weights_key: str) -> None:
    """A timm model name from a config: an architecture, never a model-hub address (nothing is downloaded)."""
    if re.match(r"(hf[-_]hub|timm)[:/]", name):
        raise ValueError(f"{key} {name!r} would be fetched from a model hub; give timm's architecture name (e.g. "
                         f"vit_large_patch16_224) and the weights as a local file ({weights_key})")


def check_normalisation(mean_key: str, mean: tuple[float, ...] | None, std_key: str,
                        std: tuple[float, ...] | None) -> None:
    """An input normalisation given in a config: both or neither, a positive std, both on the 0-1 scale."""
    if (mean is None) != (std is None):
        given, other = (mean_key, std_key) if mean is not None else (std_key, mean_key)
        raise ValueError(f"{given} is set and {other} is not: give both (the weights' own normalisation, from their "
                         "model card), or neither")
    if std is not None and min(std) <= 0:
        raise ValueError(f"{std_key} {list(std)} must be positive")
    for key, v in ((mean_key, mean), (std_key, std)):
        if v is not None and max(v) > 1:
            raise ValueError(f"{key} {list(v)} is on the 0-255 scale; give it on the 0-1 scale "
                             f"(divide by 255: {[round(x / 255, 6) for x in v]})")


def check_model_kwargs(where: str, kwargs: dict[str, Any], reserved: tuple[str, ...], set_by: str) -> None:
    """Extra timm.create_model arguments from a config: numbers and timm names, never code; none that histowsss
    sets itself (``reserved``, or disagreeing with ``_AGREEING_KWARGS``)."""
    for k, v in kwargs.items():
        if isinstance(v, str) and re.fullmatch(r"[\d.\s]+[*/+-][\d.\s*/+-]+", v):
            raise ValueError(f"{where} {k}: {v!r} is an expression; write the number it gives")
        if isinstance(v, str) and v.startswith(("torch.", "nn.", "timm.")):
            raise ValueError(f"{where} {k}: {v!r} is a Python path; give timm's name instead "
                             "(act_layer: silu / gelu; mlp_layer: SwiGLUPacked)")
    # dynamic_img_size: false too (H-optimus-0's card): histowsss resamples the position embedding itself
    clash = sorted(k for k, v in kwargs.items()
                   if k in reserved or (k in _AGREEING_KWARGS and v != _AGREEING_KWARGS[k]
                                        and not (k == "dynamic_img_size" and isinstance(v, bool))))
    if clash:
        raise ValueError(f"{where} {clash} are set by histowsss ({set_by}); remove them")
