"""The ``data`` section (manifest, classes, masks, patches, stain normalisation) and the ``points`` section
(sparse clicks)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, field_validator, model_validator

from histowsss.config.base import Strict


HEX_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")  # a display colour, as QuPath and the overlays take it


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
        # warned, not refused: the colours enter the steps' settings hashes, so a run folder made with such a config
        # would have to be made again from train_cam to fix them (`histowsss predict --colors` draws with others)
        unknown = [k for k in self.colors if k not in self.names]
        if unknown:
            warnings.warn(f"data.classes.colors names {', '.join(map(repr, unknown))}, not one of the classes "
                          f"({', '.join(self.names)}): not used", UserWarning, stacklevel=2)
        bad = [f"{k}: {v!r}" for k, v in self.colors.items() if not re.fullmatch(r"#?[0-9a-fA-F]{6}", str(v))]
        if bad:
            warnings.warn(f"data.classes.colors must be '#rrggbb' (hex, e.g. '#e6194b'): {', '.join(bad)}; "
                          "the default colour of its class is drawn instead; `histowsss predict` --colors "
                          "CLASS=#rrggbb draws another (changed in the config, every step would be made again)",
                          UserWarning,
                          stacklevel=2)
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
        """The class's display colour as '#rrggbb': the configured one ('#' optional), else (none, or one that is no
        hex colour: warned about when the config loads) the default of its position."""
        default = ["#000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"]
        given = str(self.colors.get(name, "")).strip()
        if re.fullmatch(r"#?[0-9a-fA-F]{6}", given):
            return "#" + given.lstrip("#").lower()
        return default[self.names.index(name) % len(default)]


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


class DataConfig(Strict):
    """Where the manifest is and how to read labels and masks."""

    manifest: Path
    root: Path | None = Field(None, description="folder that image/mask paths are relative to (default: "
                                                "manifest's folder)")
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


def data_split_leaks(data: DataConfig) -> list[str]:
    """Why the test splits of ``data`` are not held out (empty when they are): a split that is also a training or
    validation split."""
    both = sorted(set(data.test_splits) & set(data.train_splits + data.val_splits))
    return [f"split(s) {', '.join(both)} are both in data.test_splits and in data.train_splits/val_splits; a test "
            "split must be held out: name disjoint splits (e.g. `histowsss data split`)"] if both else []


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
