"""Typed configuration: one pydantic model per pipeline step, loaded from YAML with CLI overrides.

Unknown keys are errors that name the key. The resolved config is saved into the run folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Any, Callable, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


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


class ClassMap(Strict):
    """Class names, which one is background/normal, and display colours."""

    names: list[str] = Field(min_length=2, description="the classes, in class-id order: a class-id mask's value "
                             "is its position here")
    background: str | None = Field(None, description="the background / normal class (absence of any other)")
    colors: dict[str, str] = Field(default_factory=dict, description="class -> '#rrggbb' for overlays/QuPath")

    @model_validator(mode="after")
    def _check(self) -> "ClassMap":
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"class names must be unique, got {self.names}")
        if self.background is not None and self.background not in self.names:
            raise ValueError(f"background class {self.background!r} is not one of names {self.names}")
        return self

    def index(self, name: str) -> int:
        """Index of a class name; raises KeyError listing the known names."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown class {name!r}; known classes: {', '.join(self.names)}") from None

    @property
    def background_index(self) -> int | None:
        return None if self.background is None else self.names.index(self.background)

    def color(self, name: str) -> str:
        default = ["#000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"]
        return self.colors.get(name, default[self.names.index(name) % len(default)])


class PatchConfig(Strict):
    """Tiling of images into training patches (crop labels)."""

    size: int = Field(112, ge=16)
    stride: int = Field(56, ge=1)
    border: Literal["shift", "pad", "drop"] = "shift"
    label_rule: Literal["image", "mask_fraction"] = Field(
        "image",
        description="image: a patch inherits its image's labels (multiple-instance style); "
        "mask_fraction: a patch carries class c if more than min_fraction of its labelled (not ignore) pixels are c in "
        "the mask",
    )
    min_fraction: float = Field(0.05, ge=0.0, lt=1.0)


# Config values that describe the data without changing any step's output: kept out of step hashes, so adding
# them to a finished run's config does not make steps redo their work.
# data.mpp: metadata; train_cam.small_images: refuse gives the mirror network or nothing; train_seg.channels_last: a
# memory layout, train_seg.fused_optimizer: a kernel (the same network up to float rounding, as with another thread
# count)
HASH_EXEMPT = ("data.mpp", "train_cam.small_images", "train_seg.channels_last", "train_seg.grad_checkpointing",
               "train_seg.fused_optimizer")
# Sections added after runs existed: in a step hash only when set (see RunConfig.step_hash).
LATE_SECTIONS = ("points",)


class DataConfig(Strict):
    """Where the manifest is and how to read labels and masks."""

    manifest: Path
    root: Path | None = Field(None, description="folder that image/mask paths are relative to (default: manifest's folder)")
    label_column: str | None = Field(
        "label", description="column of class names (';'-separated if multi_label); null: labels come from masks "
        "(patch rule) and are used for training only through patches")
    label_columns: list[str] | None = Field(
        None, description="instead of label_column: one column per class, named as the class, holding 1 / 0 (also "
        "true / false, yes / no, x / empty) for present / absent (one-hot or multi-hot); an image with none is "
        "background (the background class need not have a column)")
    multi_label: bool = False
    label_separator: str = ";"
    classes: ClassMap
    mask_column: str | None = "mask"
    mask_mode: Literal["class_ids", "binary", "binary_image_label"] = Field(
        "class_ids",
        description="class_ids: pixel values are class indices; binary: mask>0 is mask_foreground_class; "
        "binary_image_label: mask>0 takes the image's own (non-background) label, background elsewhere",
    )
    mask_foreground_class: str | None = None
    mask_ignore_values: list[int] = Field(
        default_factory=list, description="raw mask values left out of every score and label (ignore), e.g. [4] for "
        "the white background of LUAD-HistoSeg / BCSS-WSSS masks; 255 is always ignore")
    mask_colors: dict[str, str | list[str]] | None = Field(
        None, description="colour masks (RGB, e.g. exported with class colours): class -> '#rrggbb' of its pixels "
        "(or a list: several colours merged into one class), and 'ignore' -> colour(s) left out (e.g. white "
        "background); a colour not listed is an error naming it. Needs mask_mode class_ids")
    mask_values: dict[str, int | list[int]] | None = Field(
        None, description="single-channel masks whose values are not the class positions (e.g. QuPath's labelled "
        "tiles: 0 unannotated, 1, 2 ... in the order labels were added; BCSS's many tissue codes): class -> its value "
        "or a list of values (merged into the class), and 'ignore' -> value(s) left out; a value not listed is an "
        "error naming it. Needs mask_mode class_ids")
    points_column: str | None = Field(None, description="column of clicks 'x y class; x y class; ...' (level-0 "
                                      "pixels of the image); see the points section")
    train_splits: list[str] = Field(default_factory=lambda: ["train"])
    val_splits: list[str] = Field(default_factory=list)
    test_splits: list[str] = Field(default_factory=lambda: ["test"])
    image_scale: float = Field(1.0, gt=0.0, le=4.0, description="resize every image by this factor on read")
    mpp: float | None = Field(None, gt=0.0, description="microns per pixel of the manifest's images (before "
                              "image_scale); predict reads whole-slide images at this resolution / image_scale. "
                              "Not part of any step's hash")
    stain_normalization: Literal["none", "reinhard", "macenko"] = Field(
        "none", description="reinhard: LAB mean/std matched to a reference; macenko: H&E stain vectors and "
        "concentrations mapped to a reference (docs/data.md)")
    stain_reference: list[list[float]] | None = Field(
        None, description="reinhard: [[L, a, b] mean, [L, a, b] std]; macenko: [[r, g, b OD vector, 99th-percentile "
        "concentration] of haematoxylin, [the same] of eosin]; `histowsss data stain-reference` measures one")
    patches: PatchConfig | None = None

    @field_validator("label_columns", mode="before")
    @classmethod
    def _columns_from_text(cls, v: Any) -> Any:
        """``--set data.label_columns=A,B`` (text) reads as the list [A, B]."""
        return [c.strip() for c in v.split(",") if c.strip()] if isinstance(v, str) else v

    def _check_mask_map(self, key: str, mapping: dict[str, Any], valid: Callable[[Any], bool], noun: str,
                        form: str) -> None:
        """``mask_colors`` / ``mask_values``: classes (or 'ignore') to distinct valid colours / values, read as
        class ids (mask_mode class_ids)."""
        unknown = [k for k in mapping if k not in self.classes.names and k != "ignore"]
        listed = {k: v if isinstance(v, list) else [v] for k, v in mapping.items()}
        bad = [f"{k}: {v!r}" for k, vs in listed.items() for v in vs or [None] if v is None or not valid(v)]
        if unknown or bad or not mapping:
            not_class = f"; not a class: {', '.join(map(repr, unknown))}" if unknown else ""
            raise ValueError(f"{key} maps each class (of {', '.join(self.classes.names)}) or 'ignore' to a {noun} "
                             f"{form} or a list of them{not_class}" + (f"; not a {noun}: {', '.join(bad)}" if bad
                                                                        else ""))
        seen: dict[Any, str] = {}
        for k, vs in listed.items():
            for v in vs:
                twin = seen.setdefault(v.strip().lower() if isinstance(v, str) else v, k)
                if twin != k:
                    raise ValueError(f"{key} gives {twin!r} and {k!r} the same {noun} {v}: a pixel of it would have "
                                     "two classes")
        if self.mask_mode != "class_ids":
            raise ValueError(f"{key} maps masks to classes, and mask_mode is {self.mask_mode!r}: set mask_mode "
                             f"class_ids (or leave out {key})")

    @property
    def has_labels(self) -> bool:
        """Whether the manifest holds image labels (a label column or one column per class)."""
        return self.label_column is not None or bool(self.label_columns)

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.label_columns is not None:
            if "label_column" in self.model_fields_set and self.label_column is not None:
                raise ValueError(f"data.label_column ({self.label_column!r}) and data.label_columns both name labels; "
                                 "keep one (label_column: null with label_columns)")
            self.label_column = None  # (the default 'label' gives way to the class columns)
            unknown = [c for c in self.label_columns if c not in self.classes.names]
            if unknown or not self.label_columns or len(set(self.label_columns)) != len(self.label_columns):
                raise ValueError(f"data.label_columns {self.label_columns} must name classes of data.classes.names "
                                 f"({', '.join(self.classes.names)}), each once (not a class: "
                                 f"{', '.join(map(repr, unknown)) or 'none'}); a column is named as its class")
        if self.mask_mode == "binary" and self.mask_foreground_class is None:
            raise ValueError("mask_mode 'binary' needs mask_foreground_class (the class of mask>0 pixels)")
        if (self.mask_colors or self.mask_values) and self.mask_ignore_values:
            key = "mask_colors" if self.mask_colors else "mask_values"
            raise ValueError(f"mask_ignore_values and {key} both say which mask pixels to leave out: with {key} "
                             f"give the value as 'ignore' there (and leave mask_ignore_values empty)")
        if self.mask_colors and self.mask_values:
            raise ValueError("mask_values (grey masks) and mask_colors (colour masks) both map masks: keep the one "
                             "your masks need")
        if self.mask_colors is not None:
            hex_colour = re.compile(r"#[0-9a-fA-F]{6}")
            self._check_mask_map("mask_colors", self.mask_colors,
                                 lambda v: bool(hex_colour.fullmatch(str(v).strip())), "colour", "'#rrggbb'")
        if self.mask_values is not None:
            self._check_mask_map("mask_values", self.mask_values, lambda v: 0 <= v <= 65535, "value", "(0-65535)")
        if self.mask_foreground_class is not None and self.mask_foreground_class not in self.classes.names:
            raise ValueError(f"mask_foreground_class {self.mask_foreground_class!r} is not one of the classes "
                             f"{self.classes.names}")
        if self.mask_mode == "binary_image_label" and self.classes.background is None:
            raise ValueError("mask_mode 'binary_image_label' needs classes.background")
        if self.mask_mode == "binary_image_label" and not self.has_labels:
            raise ValueError("mask_mode 'binary_image_label' takes the foreground's class from the image's label, and "
                             "label_column is null (no labels): set label_column, or use mask_mode 'binary' with "
                             "mask_foreground_class")
        if self.stain_reference is not None:
            check_stain_reference(self.stain_normalization, self.stain_reference)
        return self


def check_stain_reference(method: str, ref: list[list[float]]) -> None:
    """``data.stain_reference`` of the shape and range its method reads."""
    fix = "; `histowsss data stain-reference MANIFEST --method {m}` measures one on your training images"
    if method == "none":  # unused (a method switched off with --set keeps its reference)
        return
    if method == "reinhard":
        if len(ref) != 2 or any(len(r) != 3 for r in ref) or min(ref[1]) <= 0:
            raise ValueError(f"data.stain_reference {ref} for reinhard must be [[L, a, b] mean, [L, a, b] std] with "
                             "a positive std" + fix.format(m=method))
    elif len(ref) != 2 or any(len(r) != 4 for r in ref) or any(min(r) < 0 or r[3] <= 0 or sum(r[:3]) <= 0
                                                                   for r in ref):
        raise ValueError(f"data.stain_reference {ref} for macenko must be [[r, g, b, c], [r, g, b, c]]: the optical-"
                         "density vector of haematoxylin, then of eosin (non-negative), each with the 99th percentile "
                         "of its concentration (positive)" + fix.format(m=method))


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


class BackboneConfig(Strict):
    """A timm CNN or vision transformer (e.g. a pathology foundation model); weights 'imagenet', 'none' or a file.

    'imagenet' is the offline package's; a ViT (timm's VisionTransformer) runs on a 16-px token grid
    (docs/cam.md)."""

    name: str = "tf_efficientnet_lite0"
    weights: str = Field("imagenet", description="'imagenet', 'none' (random init) or a path to a state dict "
                         "(.safetensors, or .pth / .bin read with torch.load(weights_only=True))")
    output_stride: Literal[8, 16, 32] = 16
    frozen_stages: int = Field(5, ge=0, description="feature stages kept frozen (0 = train all; >= number of stages "
                               "= whole backbone; a vision transformer: 0 or >= 4, frozen or trained whole)")
    channels_last: bool = True
    model_kwargs: dict[str, int | float | bool | str | list[int] | None] = Field(
        default_factory=dict, description="extra arguments of timm.create_model that the weights need (UNI: "
        "{init_values: 1.0e-5}); act_layer / norm_layer by timm's names, mlp_layer one of Mlp, SwiGLUPacked, SwiGLU, "
        "GluMlp")
    mean: tuple[float, float, float] | None = Field(None, description="input normalisation mean (RGB, 0-1), e.g. "
                                                    "from a foundation model's card; null = the weights' own "
                                                    "(timm's for the architecture with a local file)")
    std: tuple[float, float, float] | None = Field(None, description="input normalisation std; null = the weights' own")

    @field_validator("model_kwargs", mode="before")
    @classmethod
    def _yaml_floats(cls, v: Any) -> Any:
        return yaml_floats(v)

    @model_validator(mode="after")
    def _check(self) -> "BackboneConfig":
        check_not_hub("backbone.name", self.name, "backbone.weights")
        check_normalisation("backbone.mean", self.mean, "backbone.std", self.std)
        check_model_kwargs("backbone.model_kwargs", self.model_kwargs,
                           ("features_only", "output_stride", "pretrained_cfg_overlay", "checkpoint_path"),
                           "output_stride: backbone.output_stride; weights: backbone.weights")
        return self


class AugmentConfig(Strict):
    """H&E augmentation: dihedral flips/rotations, HED stain jitter, scale."""

    flips: bool = True
    rot90: bool = True
    hed_jitter: float = Field(0.03, ge=0.0, description="std of the HED-space perturbation")
    scale_range: tuple[float, float] = (0.8, 1.25)


# train_cam.rpnet options and their defaults (models/rpnet.py reads them)
RPNET_OPTIONS: dict[str, int | float] = {"mid_level": 2, "seed_threshold": 0.5, "consistency_weight": 10.0,
                                         "branch_weight": 1.0, "sigma": 1.0}


class TrainCamConfig(Strict):
    """Classifier training for CAMs."""

    network: Literal["cam", "rpnet"] = "cam"
    background_mode: Literal["absence", "class"] = Field(
        "absence",
        description="absence: the classifier has outputs for non-background classes only and an image "
        "labelled only background/normal has all-zero targets; class: background is a classifier output "
        "trained from labels (e.g. crop labels that mark background)",
    )
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    crop_size: int = Field(224, ge=32)
    small_images: Literal["mirror", "refuse"] = Field(
        "mirror", description="training images smaller than crop_size (random crops; unpadded data.patches always "
        "refuse them): mirror them out at the bottom/right to the crop (their label still holds for mirrored "
        "tissue; the step counts them) or refuse them with the file names")
    lr: float = Field(1e-3, gt=0)
    backbone_lr_mult: float = Field(0.1, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    class_balance: bool = True
    pooling: Literal["gap", "topk"] = Field(
        "gap", description="how the class map becomes the image's logit: gap (global average, the CAM paper's) or "
        "topk (the mean of the topk_fraction highest cells, multiple-instance style: a labelled class needs only its "
        "strongest regions, an absent class must be low everywhere)")
    topk_fraction: float = Field(0.25, gt=0, le=1, description="share of the cells pooling=topk averages")
    head_layers: int = Field(1, ge=0, description="3x3 conv-BN-ReLU layers between backbone and classifier")
    head_channels: int = Field(256, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)
    cache_features: bool = Field(True, description="precompute frozen-stage features once per augmented copy")
    cache_copies: int = Field(4, ge=1, description="augmented copies per image when caching features")
    cache_scales: list[float] = Field(default_factory=lambda: [1.0])
    isolate_patches: bool = Field(
        False, description="with data.patches and a cache: run the backbone on each patch alone (no context from "
        "outside the patch), so patch labels describe what the features see; pair with make_cam.patch_size")
    crops_per_image: int = Field(8, ge=1, description="random crops drawn from each image per epoch (no patches)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    num_workers: int = Field(0, ge=0, description="unused (train_cam draws its crops from the feature cache in the "
                             "main process); kept so that older configs load (and, set, in the hash as before)")
    seed: int = 0
    min_epochs_before_diagnosis: int = Field(3, ge=1)
    rpnet: dict[str, Any] = Field(
        default_factory=dict, description="RPNet options (network: rpnet), each optional: "
        + ", ".join(f"{k} ({v})" for k, v in RPNET_OPTIONS.items())
        + ": the backbone level of the mid-resolution prototypes, the cut of the max-normalised CAM that makes "
        "the seeds, the weights of the consistency loss and of the prototype branch's loss, and the Gaussian "
        "smoothing of the foreground map (docs/cam.md)")

    @field_validator("rpnet")
    @classmethod
    def _known_rpnet_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(RPNET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; known: {', '.join(RPNET_OPTIONS)}")
        out = {}
        for k, val in v.items():
            kind = type(RPNET_OPTIONS[k])
            if isinstance(val, str):  # YAML 1.1 reads 1e1 as text; RPNet always took it as the number
                try:
                    val = float(val)
                except ValueError:
                    pass
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or (
                    kind is int and val != int(val)):
                raise ValueError(f"{k}: {val!r} is not a{'n integer' if kind is int else ' finite number'}")
            out[k] = val
        return out  # only what was given: the step hash of a run that set none stays the same


class MakeCamConfig(Strict):
    """Multi-scale + flip CAM inference."""

    scales: list[float] = Field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0], min_length=1)
    flip: bool = True
    input_scale: float = Field(1.0, gt=0, description="extra resize of images at inference (e.g. 2.0 for crop-trained nets)")
    patch_size: int | None = Field(None, ge=16, description="patch-wise CAMs: each patch (at each scale) alone "
                                   "through the network, overlapping by half, averaged; null = whole image")
    splits: list[str] | None = Field(None, description="default: train + val + test splits")
    cpu_amp: bool = Field(False, description="bfloat16 autocast for the CAM network's inference on the CPU (about 2x "
                          "faster on CPUs with AVX512-BF16 or AMX, slower on others, which make_cam names); also the "
                          "CAM classifier of predict's image gate (`predict --cpu-amp/--no-cpu-amp` decides it there)")


class EvalCamConfig(Strict):
    """Threshold sweep (on train/val) and evaluation."""

    choose_on: list[str] | None = Field(None, description="splits to choose thresholds on (default: train + val)")
    thresholds: list[float] = Field(default_factory=lambda: [round(0.05 * i, 2) for i in range(1, 20)])
    offsets: list[float] = Field(default_factory=lambda: [round(-0.5 + 0.05 * i, 2) for i in range(21)])
    gate_thresholds: list[float] = Field(
        default_factory=lambda: [0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0],
        description="candidate class-presence probability cuts for unlabelled (test) images; the best on the "
        "choose_on splits (classifier gating, chosen background parameter) is used, ties keep the first")
    no_mask_value: float | None = Field(
        None, description="background threshold / offset when no image of choose_on has a mask (nothing to sweep "
        "on); null = 0.15 in threshold mode (IRN's CAM evaluation threshold), 0.0 in offset mode")
    label_gating: Literal["image", "patch"] = Field(
        "image", description="how training labels gate CAM classes wherever labels are used (eval_cam's label-gated "
        "labels, IR seeds, pseudo-masks, CAM labels for train_seg): image = the image's labels; patch = a pixel may "
        "only take the classes of every labelled patch covering it (needs data.patches.label_rule=mask_fraction; "
        "see data/label_gate.py)")


class IrLabelConfig(Strict):
    """cam_to_ir_label (IRN): confident foreground / background / ignore labels from the CAMs (see docs/irn.md)."""

    conf_fg: float = Field(0.30, gt=0, le=1, description="foreground where the normalised CAM >= conf_fg (IRN 0.30)")
    conf_bg: float = Field(0.05, ge=0, lt=1, description="background where every foreground CAM < conf_bg (IRN 0.05)")
    margin: float = Field(0.1, ge=0, le=1, description="background-channel ('offset') mode only: a confident class "
                          "must beat the other side's normalised CAM by this much")
    select: Literal["sweep", "fixed"] = Field(
        "sweep", description="sweep: use the sweep pair with the largest coverage whose class-mean precision on the "
        "train masks is >= min_precision (as eval_cam chooses on train); fixed: use conf_fg / conf_bg")
    sweep: list[tuple[float, float]] = Field(
        default_factory=lambda: [(0.2, 0.05), (0.3, 0.05), (0.4, 0.05), (0.5, 0.05), (0.3, 0.1), (0.4, 0.15),
                                 (0.5, 0.2)], description="(conf_fg, conf_bg) pairs scored on the train masks")
    min_precision: float = Field(0.9, ge=0, le=1)
    crf: bool = Field(False, description="dense CRF on both confident maps (needs the [crf] extra); "
                      "writes ir_labels/ and ir_labels_crf/, train_irn uses the CRF labels")
    crf_iterations: int = Field(10, ge=1)
    crf_gt_prob: float = Field(0.7, gt=0, lt=1)
    splits: list[str] | None = Field(None, description="images of the IRN steps (default: train + val splits)")

    @model_validator(mode="after")
    def _check(self) -> "IrLabelConfig":
        for fg, bg in [(self.conf_fg, self.conf_bg)] + list(self.sweep):
            if bg > fg:
                raise ValueError(f"conf_bg ({bg}) must not exceed conf_fg ({fg})")
        return self


class TrainIrnConfig(Strict):
    """train_irn: boundary + displacement heads on a frozen backbone (features cached once per image copy)."""

    epochs: int = Field(5, ge=1)
    batch_size: int = Field(8, ge=1)
    crop_size: int = Field(256, ge=32, description="training crop side in image pixels (multiple of the "
                           "backbone's largest stride; smaller images are mirrored out to it, their labels ignore there)")
    crops_per_image: int = Field(4, ge=1, description="random crops of each image per epoch")
    copies: int = Field(2, ge=1, le=8, description="cached dihedral copies per image: 1 = original, 2 = + horizontal "
                        "flip (IRN), 4 / 8 = + rotations")
    radius: int = Field(10, ge=2, le=16, description="pixel-pair radius on the stride-4 grid (IRN 10)")
    pair_step: int = Field(2, ge=1, le=4, description="pairs from every pair_step-th source cell (random phase "
                           "per batch); 1 = all (reference), 2 = a quarter of the cost")
    lr: float = Field(5e-3, gt=0, description="AdamW learning rate of the heads (poly decay, power 0.9)")
    weight_decay: float = Field(1e-4, ge=0)
    edge_channels: int = Field(32, ge=4)
    dp_channels: int = Field(64, ge=8)
    seed: int = 0


class SemSegConfig(Strict):
    """make_sem_seg_labels: sparse random walk of the CAMs with IRN's boundary map."""

    radius: int = Field(5, ge=1, description="random-walk neighbourhood on the stride-4 grid (IRN 5)")
    beta: float = Field(10.0, ge=0, description="affinity exponent (IRN 10)")
    exp_times: int = Field(8, ge=0, description="2**exp_times walk steps (IRN 8)")
    bg_threshold: float = Field(0.25, ge=0, le=1, description="threshold mode: constant background score after "
                                "the walk (IRN sem_seg_bg_thres 0.25)")
    bg_offset: float | Literal["eval_cam"] = Field(
        "eval_cam", description="background-channel mode: offset added to the walked, normalised background map "
        "before the argmax; 'eval_cam' = the offset eval_cam chose")
    flip: bool = Field(True, description="average the boundary map over a horizontal flip (IRN)")


class InsSegConfig(Strict):
    """make_ins_seg_labels: instances from the displacement field x the semantic pseudo-labels."""

    refine_iterations: int = Field(100, ge=1, description="centroid-following steps (IRN: any >= 100)")
    cluster_threshold: float = Field(2.5, gt=0, description="|displacement| below this (grid cells) is a centroid region (IRN 2.5)")
    min_cluster_fraction: float = Field(0.1, ge=0, le=1, description="clusters smaller than this fraction of their "
                                        "semantic component are merged into the nearest kept one")
    min_area: int = Field(16, ge=0, description="instances smaller than this (pixels) are dropped")


class TrainSegConfig(Strict):
    """train_seg: the final segmentation network (smp U-Net / DeepLabV3+ on a timm encoder), see docs/segmentation.md."""

    architecture: Literal["unet", "deeplabv3plus", "dpt"] = Field(
        "unet", description="smp decoder: unet and deeplabv3plus on a timm CNN; dpt (dense prediction transformer) on "
        "a timm vision transformer, e.g. a pathology foundation model (docs/segmentation.md)")
    encoder: str = Field("tf_efficientnet_lite0", description="timm model name, used through smp's 'tu-' encoder")
    encoder_weights: str = Field("imagenet", description="'imagenet' (offline package), 'none' or a local file; "
                                 "smp never downloads (encoder_weights=None is always passed to smp)")
    encoder_model_kwargs: dict[str, int | float | bool | str | list[int] | None] = Field(
        default_factory=dict, description="extra arguments of timm.create_model that the encoder weights need, as "
        "backbone.model_kwargs (UNI: {init_values: 1.0e-5})")
    encoder_mean: tuple[float, float, float] | None = Field(None, description="input normalisation mean (RGB, 0-1) "
                                                            "of the encoder weights; null = theirs (timm's for the "
                                                            "architecture with a local file); needed for dpt with a "
                                                            "weights file")
    encoder_std: tuple[float, float, float] | None = Field(None, description="input normalisation std; null = the "
                                                           "weights' own")
    freeze_encoder: bool = Field(False, description="keep the encoder's weights as loaded (no gradients, its "
                                 "normalisation layers in eval mode): a large pretrained encoder trains only the "
                                 "decoder, faster and in less memory")
    decoder_channels: list[int] | None = Field(None, description="smp decoder widths (unet: 5 values; "
                                               "deeplabv3plus: 1 value; dpt: 1 value, the fusion width, or 5, the "
                                               "four reassemble widths and the fusion width); null = smp's defaults")
    labels: Literal["pseudo", "cam", "pseudo_or_cam", "best_on_train", "folder"] = Field(
        "pseudo", description="weak training labels: pseudo = pseudo/<name>.png (IRN), cam = eval_cam's label-gated "
        "CAM labels, pseudo_or_cam = pseudo when make_sem_seg_labels finished, else CAM labels, best_on_train = "
        "whichever of the two has the higher mIoU on the training images (eval_sem_seg; before it has run, as "
        "pseudo_or_cam), folder = class-id PNGs in train_seg.label_dir (e.g. `histowsss predict` output of an "
        "earlier run on the training images: self-training, or masks exported from QuPath)")
    label_dir: str | None = Field(None, description="labels=folder: <name>.png or <name>_labels.png per training "
                                  "image (class ids, 255 = ignore), at the image's own or at data.image_scale size")
    supervised: bool = Field(False, description="train on the ground-truth masks instead (the upper bound); "
                             "outputs are named seg_supervised (checkpoint, log, metrics, pred_supervised/)")
    splits: list[str] | None = Field(None, description="training images (default: train + val splits)")
    patch_veto: bool = Field(False, description="with patch labels (data.patches.label_rule: mask_fraction): a "
                             "weak-label pixel whose class is missing from the label of a patch covering it becomes "
                             "ignore (a veto; unlike eval_cam.label_gating=patch nothing is forced to a class)")
    boundary_ignore: int = Field(0, ge=0, description="weak labels only: pixels within this many pixels (at the "
                                 "labels' resolution, a square window) of a pixel of another class become ignore, "
                                 "so the network does not learn the weak labels' most doubtful pixels; 0 = off")
    synthetic_fraction: float = Field(0.0, ge=0, le=0.9, description="weak labels only: this fraction of each "
                                      "epoch's crops is synthesised from regions known to be one class (a mosaic "
                                      "with smooth shapes pasted on it, exact masks; data/synthesis.py), the rest "
                                      "cut from the images with their weak labels; needs patch labels by mask "
                                      "fraction, or multi-label tissue labels without a background class; 0 = off")
    loss: Literal["oeem", "gce", "ce"] = Field(
        "oeem", description="oeem: pixel CE weighted by the detached probability of the label, normalised per "
        "class (online easy-example mining); gce: generalised CE (1 - p^q) / q; ce: plain. Supervised uses ce")
    loss_warmup_epochs: int = Field(1, ge=0, description="epochs of plain CE before oeem/gce take over")
    gce_q: float = Field(0.7, gt=0, le=1)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(8, ge=1, description="crops per optimiser step and process (global = x world size)")
    crop_size: int = Field(160, ge=32, multiple_of=32, description="training crop side (GPU: 384-512)")
    crops_per_image: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    encoder_lr_mult: float = Field(0.3, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(0.3, ge=0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    amp: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on CPU)")
    cpu_amp: bool = Field(False, description="bfloat16 autocast for training on the CPU too (fast on CPUs with "
                          "AVX512-BF16 or AMX, slow on others, which train_seg names; inference: eval_seg.cpu_amp)")
    grad_checkpointing: bool = Field(False, description="recompute the encoder's activations in the backward pass "
                                     "instead of keeping them (timm's gradient checkpointing): less training memory "
                                     "for fine-tuning a deep encoder (a ViT-L on a GPU), one more encoder forward per "
                                     "step; the same gradients, so not part of the config hash")
    channels_last: bool = Field(True, description="the network's weights in channels-last memory layout (as its crops "
                                "are); a layout, so not part of the config hash, though like another thread count it "
                                "changes the float rounding")
    fused_optimizer: bool = Field(True, description="AdamW on PyTorch's fused kernel (CPU, CUDA): one pass over all "
                                  "weights instead of PyTorch's CPU default of one tensor at a time; the same update "
                                  "up to float rounding, so not part of the config hash (before stop 41: false)")
    loader_threads: int | None = Field(None, ge=0, description="threads that cut and augment crops ahead of the "
                                       "network (null: half the cores, at most 8; 0 on <= 2 cores); the batches "
                                       "are the same for any number (set, it is in the hash, as it always was)")
    seed: int = 0
    members: int = Field(1, ge=1, le=8, description="a seed ensemble: networks trained one after another with seeds "
                         "seed, seed + 1, ... (files seg, seg_m1, ...); eval_seg and predict average their class "
                         "probabilities. Training and inference cost grow with the count")

    @field_validator("encoder_model_kwargs", mode="before")
    @classmethod
    def _yaml_floats(cls, v: Any) -> Any:
        return yaml_floats(v)

    @model_validator(mode="after")
    def _check(self) -> "TrainSegConfig":
        check_not_hub("train_seg.encoder", self.encoder, "train_seg.encoder_weights")
        check_normalisation("train_seg.encoder_mean", self.encoder_mean, "train_seg.encoder_std", self.encoder_std)
        check_model_kwargs("train_seg.encoder_model_kwargs", self.encoder_model_kwargs,
                           ("features_only", "output_stride", "pretrained_cfg_overlay", "checkpoint_path",
                            "in_chans"), "weights: train_seg.encoder_weights")
        # (deeplabv3plus reads the first value, as it always has: saved run configs with more still load)
        widths = {"unet": (5,), "dpt": (1, 5)}.get(self.architecture)
        if widths and self.decoder_channels is not None and len(self.decoder_channels) not in widths:
            raise ValueError(f"train_seg.decoder_channels {self.decoder_channels} for {self.architecture} needs "
                             + {"unet": "5 values", "dpt": "1 value (the fusion width) or 5 (four reassemble widths, "
                                "then the fusion width)"}[self.architecture])
        if self.architecture == "dpt" and self.encoder_weights == "imagenet":
            raise ValueError("train_seg.architecture dpt runs on a vision transformer, and no ImageNet weights for "
                             "one are packaged: set train_seg.encoder (e.g. vit_large_patch16_224) and "
                             "train_seg.encoder_weights to its file (with encoder_mean / encoder_std), or none")
        if self.architecture == "dpt" and self.encoder_weights != "none" and self.encoder_mean is None:
            raise ValueError(f"train_seg.encoder_weights {self.encoder_weights}: set train_seg.encoder_mean and "
                             "train_seg.encoder_std to the normalisation these weights were trained with (their model "
                             "card; UNI: mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225])")
        if self.labels == "folder" and not self.label_dir:
            raise ValueError("train_seg.labels=folder needs train_seg.label_dir (a folder of class-id PNGs)")
        if self.grad_checkpointing and self.freeze_encoder:
            raise ValueError("train_seg.grad_checkpointing saves nothing with train_seg.freeze_encoder (a frozen "
                             "encoder keeps no activations for the backward pass); set one of them false")
        return self


class EvalSegConfig(Strict):
    """eval_seg / predict: sliding-window inference with blending and test-time augmentation."""

    tile_size: int = Field(256, ge=32, multiple_of=32)
    overlap: float = Field(0.25, ge=0, lt=1, description="fraction of a tile shared with its neighbour")
    blend: Literal["gaussian", "linear", "mean"] = "gaussian"
    tta: Literal["none", "flip", "dihedral"] = Field("flip", description="flip: identity + horizontal flip; "
                                                     "dihedral: the 8 flips/rotations")
    scales: list[float] = Field([1.0], min_length=1, description="image scales of the inference (each with the "
                                "sliding window and TTA; probabilities resized back and averaged), e.g. [0.75, 1.0, "
                                "1.25]; cost grows with the sum of the squared scales")
    batch_size: int = Field(8, ge=1, description="tiles per forward pass")
    cpu_amp: bool = Field(False, description="bfloat16 autocast for inference on the CPU (eval_seg, predict, slides; "
                          "about 2x faster on CPUs with AVX512-BF16 or AMX, slower on others, which eval_seg names); "
                          "on CUDA inference follows train_seg.amp; `histowsss predict --cpu-amp/--no-cpu-amp` "
                          "decides it (and make_cam.cpu_amp) for one call")
    splits: list[str] | None = Field(None, description="splits to evaluate (default: data.test_splits)")
    save_predictions: bool = Field(True, description="write pred/<name>.png (class ids)")
    image_gate: bool = Field(False, description="remove the classes the CAM classifier calls absent from an image "
                             "(image-level probability below eval_cam's chosen gate) before the argmax; background is "
                             "never removed. eval_seg reads make_cam's cams/<name>.npz, predict runs the CAM network "
                             "(steps/image_gate.py). For image-level labels (e.g. benign / malignant)")
    image_gate_cut: float | None = Field(None, ge=0, le=1, description="image_gate's class-presence cut; null = "
                                         "eval_cam's chosen gate (on train, where a classifier is rarely wrong, "
                                         "every cut may tie: choose it on held-out patients instead)")
    min_object_area: int = Field(0, ge=0, description="after the argmax: regions of a non-background class smaller "
                                 "than this many pixels (at data.image_scale) take the class around them "
                                 "(ops/label_cleanup.py); eval_seg, predict and slides; 0 = off")
    max_hole_area: int = Field(0, ge=0, description="after the argmax: background regions smaller than this many "
                               "pixels that do not touch the image border (holes) take the class around them; 0 = off")
    split_h: float = Field(0.0, ge=0, description="after the clean-up: cut objects joined by a neck along watershed "
                           "lines of their distance transform where both sides rise at least this many pixels above "
                           "the neck (touching glands become separate objects, the line background); 0 = off")

    @model_validator(mode="after")
    def _check(self) -> "EvalSegConfig":
        if any(s <= 0 or s > 4 for s in self.scales):
            raise ValueError(f"eval_seg.scales must lie in (0, 4], got {self.scales}")
        return self


class PointsConfig(Strict):
    """Sparse point annotations (clicks): where they come from and how far a click's class reaches."""

    file: Path | None = Field(None, description="CSV of clicks: image (the manifest name), x, y (level-0 pixels of "
                              "the image), class; or a folder of QuPath point exports, one per image, named "
                              "<image name>.geojson; joined with data.points_column when both are given")
    radius: float = Field(8.0, ge=0.0, description="a click labels the disk of this radius (level-0 pixels) around "
                          "it; at least the pixel or grid cell it falls in")
    use_in: list[Literal["ir_label", "sem_seg", "train_seg"]] = Field(
        default_factory=lambda: ["ir_label", "sem_seg", "train_seg"],
        description="where clicks act: ir_label (confident seeds of IRN), sem_seg (seed the random walk and fix "
        "the pseudo-mask at the clicks), train_seg (fix the weak labels at the clicks)")


class RunConfig(Strict):
    """The whole pipeline's configuration."""

    name: str = "run"
    seed: int = Field(0, description="unused: every training step has its own (train_cam.seed, train_irn.seed, "
                      "train_seg.seed); kept so that older configs load")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    upper_bound: bool = Field(False, description="also train and evaluate the segmentation network on the "
                              "ground-truth masks (steps train_seg_supervised, eval_seg_supervised): the upper bound "
                              "of the report; needs masks for the training images")
    data: DataConfig
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    train_cam: TrainCamConfig = Field(default_factory=TrainCamConfig)
    make_cam: MakeCamConfig = Field(default_factory=MakeCamConfig)
    eval_cam: EvalCamConfig = Field(default_factory=EvalCamConfig)
    ir_label: IrLabelConfig = Field(default_factory=IrLabelConfig)
    train_irn: TrainIrnConfig = Field(default_factory=TrainIrnConfig)
    sem_seg: SemSegConfig = Field(default_factory=SemSegConfig)
    ins_seg: InsSegConfig = Field(default_factory=InsSegConfig)
    train_seg: TrainSegConfig = Field(default_factory=TrainSegConfig)
    eval_seg: EvalSegConfig = Field(default_factory=EvalSegConfig)
    points: PointsConfig = Field(default_factory=PointsConfig)

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        p = self.data.patches
        if self.eval_cam.label_gating == "patch" and (p is None or p.label_rule != "mask_fraction"):
            raise ValueError("eval_cam.label_gating=patch needs patch labels (data.patches with "
                             "label_rule: mask_fraction); use label_gating=image for image-level labels")
        if self.train_seg.patch_veto and (p is None or p.label_rule != "mask_fraction"):
            raise ValueError("train_seg.patch_veto needs patch labels (data.patches with label_rule: "
                             "mask_fraction); set train_seg.patch_veto=false for image-level labels")
        if self.train_seg.synthetic_fraction > 0:
            from histowsss.data.synthesis import SOURCE_FIX, synthesis_source

            if synthesis_source(self.data) is None:
                raise ValueError(f"train_seg.synthetic_fraction: {SOURCE_FIX}; an image label with an implicit "
                                 "background, or a patch label inherited from it, does not say a region is all one "
                                 "class; set train_seg.synthetic_fraction=0")
        if self.train_cam.network == "rpnet" and self.train_cam.pooling != "gap":
            raise ValueError("train_cam.pooling=topk is for network: cam (RPNet's branches pool by average); set "
                             "train_cam.pooling=gap or train_cam.network=cam")
        return self

    def step_hash(self, *sections: str) -> str:
        """Short hash of the named config sections (used to tie a step's files to its inputs).

        Only values that differ from the defaults enter the hash, so adding a new option (with a default that
        keeps the old behaviour) does not invalidate finished runs.
        """
        dump = self.model_dump(mode="json", exclude_defaults=True)
        for key in HASH_EXEMPT:  # metadata no step's output depends on
            section, name = key.split(".")
            dump.get(section, {}).pop(name, None)
        # a section added after runs existed enters only when it holds a non-default value, so those runs stay valid
        parts = {s: dump.get(s, {}) for s in sections if s not in LATE_SECTIONS or dump.get(s)}
        payload = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def backbone_digest(self) -> str | None:
        """Fingerprint (sha256) of the ``backbone.weights`` file (a local file, or for 'imagenet' the installed
        package's), recorded by the steps that read it, so that a file changed in place (or a weights package
        upgraded) makes them again; None for 'none' or a file that is not there. Kept out of the hashes: a run
        folder or an export without the file stays valid."""
        return self.weights_file_digest("backbone.weights")

    def weights_file_digest(self, key: str) -> str | None:
        """Fingerprint of the weights file that config key ``key`` ('backbone.weights', 'train_seg.encoder_weights')
        names, as :meth:`backbone_digest`."""
        section, name = key.split(".")
        w = getattr(getattr(self, section), name)
        if w == "none":
            return None
        if w == "imagenet":
            from histowsss.models.weights import packaged_weights_path

            model = self.backbone.name if section == "backbone" else self.train_seg.encoder
            try:
                return _file_fingerprint(packaged_weights_path(model))
            except Exception:  # no such package installed: the step that needs it says so
                return None
        return _file_fingerprint(Path(w).expanduser())

    def clicks_digest(self) -> str | None:
        """Digest of the clicks themselves (``points.file``'s bytes, the manifest's non-empty ``data.points_column``
        cells by image, in any row order); None when no clicks are configured. Recorded in each step's status, so
        that a step the clicks act in is made again when they change (not in the hashes: a run made before this
        record keeps its steps). A file that cannot be read digests as such (its step then says why)."""
        if self.points.file is None and self.data.points_column is None:
            return None
        h = hashlib.sha256()
        if self.points.file is not None:
            f = Path(self.points.file)
            if f.is_dir():  # a folder of QuPath exports: every export's name and bytes
                from histowsss.data.points import points_folder_files

                for g in points_folder_files(f):
                    h.update(g.name.encode() + b"\0" + g.read_bytes())
            else:
                h.update(f.read_bytes() if f.is_file() else b"(missing)")
        if self.data.points_column is not None:
            from histowsss.data.manifest import read_table

            try:
                _, rows = read_table(Path(self.data.manifest))
            except Exception:
                rows = []
            cells = sorted((r.get("name", "").strip() or r.get("image", "").strip(), r[self.data.points_column].strip())
                           for r in rows if (r.get(self.data.points_column) or "").strip())
            for name, cell in cells:
                h.update(f"{name}\t{cell}\n".encode())
        return h.hexdigest()[:16]


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def _file_fingerprint(path: Path) -> str | None:
    """sha256 of a file's bytes (cached by path, size and mtime: a 1.2 GB file is read once per process, ~1 s);
    None for a path that is no readable regular file (the loader says why when it needs it)."""
    from histowsss.digest import file_sha256

    try:
        st = path.stat()
        if not path.is_file():
            return None
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _FINGERPRINTS:
            _FINGERPRINTS[key] = file_sha256(path)[:16]
    except OSError:
        return None
    return _FINGERPRINTS[key]


def data_split_leaks(data: DataConfig) -> list[str]:
    """Why the test splits of ``data`` are not held out (empty when they are): a split that is also a training or
    validation split."""
    both = sorted(set(data.test_splits) & set(data.train_splits + data.val_splits))
    return [f"split(s) {', '.join(both)} are both in data.test_splits and in data.train_splits/val_splits; a test "
            "split must be held out: name disjoint splits (e.g. `histowsss data split`)"] if both else []


def background_only_settings(cfg: "RunConfig") -> list[str]:
    """Settings that act on the background class, set in a config that has none (they would do nothing).

    Checked when steps are planned, not when a config loads, so run folders made before the check still load."""
    es = cfg.eval_seg
    if cfg.data.classes.background is not None:
        return []
    given = [f"eval_seg.{k}={getattr(es, k)}" for k in ("max_hole_area", "split_h") if getattr(es, k)]
    return [f"{', '.join(given)} needs a background class (holes are background, and touching objects are cut apart "
            "by background): with data.classes.background null set it to 0; min_object_area (small regions take "
            "the surrounding class) works without one"] if given else []


def split_leaks(cfg: RunConfig) -> list[str]:
    """Why the test images would be trained on or used to choose a setting (empty when they are held out): checked
    before steps run (`histowsss run`, `data check --config`), not on loading, so a finished run folder or exported
    model made before the check still loads for predict and report."""
    return data_split_leaks(cfg.data) + step_split_leaks(cfg)


def step_split_leaks(cfg: RunConfig) -> list[str]:
    """The steps' own split settings that name a test split (see :func:`split_leaks`)."""
    out = []
    test = set(cfg.data.test_splits)
    for key, splits, what in (("eval_cam.choose_on", cfg.eval_cam.choose_on, "thresholds are chosen on them"),
                              ("ir_label.splits", cfg.ir_label.splits, "the IRN trains on them"),
                              ("train_seg.splits", cfg.train_seg.splits, "the segmentation network trains on them")):
        leak = sorted(set(splits or []) & test)
        if leak:
            out.append(f"{key} names test split(s) {', '.join(leak)}: {what}; leave {key} unset (train + val) or "
                       "name training/validation splits only")
    return out


BUILTIN_CONFIGS = ("demo", "glas-gland", "glas-malignant", "glas-gland-gpu", "glas-malignant-gpu")


def builtin_config_path(name: str) -> Path:
    """Path of a config shipped with the package (e.g. 'glas-gland')."""
    p = resources.files("histowsss") / "configs" / f"{name}.yaml"
    return Path(str(p))


_NULLS = ("", "null", "Null", "NULL", "~")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _field_type(keys: list[str]) -> Any:
    """The annotation of the config field at ``keys`` (through sections and dicts); None when unknown."""
    node: Any = RunConfig
    for k in keys:
        while get_origin(node) in (Union, UnionType):  # X | None: the non-None part
            args = [a for a in get_args(node) if a is not type(None)]
            node = args[0] if len(args) == 1 else None
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(k)
            node = field.annotation if field is not None else None
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        else:
            return None
    return node


def _wants_text(annotation: Any) -> bool:
    """True for a field whose values are text only (str, Path, a Literal of strings; optionally None)."""
    args = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) in (Union, UnionType) \
        else [annotation]
    if get_origin(args[0] if args else None) is Literal:
        return all(isinstance(v, str) for a in args for v in get_args(a))
    return bool(args) and all(a in (str, Path) for a in args)


def _wants_text_list(annotation: Any) -> bool:
    """True for a list whose items are text only (``list[str]``; optionally None)."""
    args = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) in (Union, UnionType) \
        else [annotation]
    return len(args) == 1 and get_origin(args[0]) is list and _wants_text(get_args(args[0])[0])


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse 'a.b.c=value' into (['a','b','c'], value).

    The value is read as YAML (numbers, booleans, null, [lists], {mappings}), except where it is text: for a field
    that only holds text (a name, a path, a colour, a separator) the value is taken as written (``name=2024``,
    ``colors.benign=#ff0000``, ``label_separator=|``, a path with ``#`` or ``: `` in it); quotes may still be used.
    A list of texts keeps its items as written too (``data.test_splits=[01, yes]`` -> ['01', 'yes']).
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value (e.g. train_cam.epochs=3)")
    key, value = text.split("=", 1)
    keys = key.strip().split(".")
    raw = value.strip()
    quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
    field = _field_type(keys)
    if _wants_text(field) and not quoted:
        return keys, None if raw in _NULLS else raw
    if _wants_text_list(field) and raw[:1] == "[":
        try:  # every item as written: YAML would read 01 as 1 and yes as true
            return keys, yaml.load(value, Loader=yaml.BaseLoader)  # noqa: S506 (BaseLoader builds only str/list/dict)
        except yaml.YAMLError as e:
            problem = str(e).strip().splitlines()[0]
            raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem}); "
                              "write lists as [a, b]") from None
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        if raw[:1] in "[{":
            problem = str(e).strip().splitlines()[0]
            raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem}); "
                              "write lists as [a, b] and mappings as {k: v}") from None
        return keys, raw  # text YAML cannot read (',', '&', '*x'): as written
    if quoted:
        return keys, parsed
    if parsed is None and raw not in _NULLS or parsed == "" and raw != "":
        return keys, raw  # '#...' (a comment to YAML), '|' or '>' (block markers): as written
    if isinstance(parsed, (dict, list)) and raw[:1] not in "[{":
        return keys, raw  # 'a: b' or '- a' inside a text value
    if isinstance(parsed, str) and _NUMBER.fullmatch(raw):  # YAML 1.1 reads '1e-4' as a string
        return keys, float(raw)
    if isinstance(parsed, str) and parsed != raw:
        return keys, raw  # YAML cut it short (e.g. at ' #')
    return keys, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a raw config dict (in place) and return it."""
    for ov in overrides:
        keys, value = parse_override(ov)
        node = raw
        for k in keys[:-1]:
            if node.get(k) is None:  # an absent section, or one written as null (a run folder's config.yaml)
                node[k] = {}
            if not isinstance(node[k], dict):
                raise ConfigError(f"override {ov!r}: {k!r} is not a section")
            node[k] = dict(node[k])  # its own copy: a YAML alias may share the mapping with another section
            node = node[k]
        node[keys[-1]] = value
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently, which drops
    a whole section written twice)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' merges a mapping; its keys may repeat
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1}); keep one",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_config(source: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (a path or a builtin name) and apply ``key=value`` overrides."""
    path = Path(source)
    if not path.is_file():
        if str(source) in BUILTIN_CONFIGS:
            path = builtin_config_path(str(source))
        else:
            raise ConfigError(
                f"config file {source} not found; pass a YAML path or one of the builtin names: {', '.join(BUILTIN_CONFIGS)}"
            )
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    apply_overrides(raw, overrides or [])
    return validate_config(raw, origin=str(path))


def validate_config(raw: dict[str, Any], origin: str = "config") -> RunConfig:
    """Validate a raw dict; errors name each offending key path."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                lines.append(f"unknown key '{loc}' (check the spelling; see docs/config.md for the keys of each section)")
            else:
                lines.append(f"'{loc}': {err['msg']}")
        raise ConfigError(f"{origin}: invalid configuration:\n  " + "\n  ".join(lines)) from None


def dump_config(cfg: RunConfig) -> str:
    """YAML text of the resolved config."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
