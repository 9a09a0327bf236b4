"""The CAM stage's sections: ``backbone``, ``train_cam`` (with its augmentation and RPNet options), ``make_cam``,
``eval_cam``."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from histowsss.config.base import Strict, check_model_kwargs, check_normalisation, check_not_hub, yaml_floats


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
    input_scale: float = Field(1.0, gt=0, description="extra resize of images at inference (e.g. 2.0 for "
                                              "crop-trained nets)")
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
