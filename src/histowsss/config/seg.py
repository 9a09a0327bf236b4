"""The segmentation stage's sections: ``train_seg`` and ``eval_seg``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from histowsss.config.base import Strict, check_model_kwargs, check_normalisation, check_not_hub, yaml_floats
from histowsss.config.cam import AugmentConfig


class TrainSegConfig(Strict):
    """train_seg: the final segmentation network (smp U-Net / DeepLabV3+ on a timm encoder; docs/segmentation.md)."""

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
