"""The IRN stage's sections: ``ir_label``, ``train_irn``, ``sem_seg`` (random walk), ``ins_seg``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from histowsss.config.base import Strict


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
                           "backbone's largest stride; smaller images are mirrored out to it, their labels ignore "
                           "there)")
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
    cluster_threshold: float = Field(2.5, gt=0, description="|displacement| below this (grid cells) is a centroid "
                                      "region (IRN 2.5)")
    min_cluster_fraction: float = Field(0.1, ge=0, le=1, description="clusters smaller than this fraction of their "
                                        "semantic component are merged into the nearest kept one")
    min_area: int = Field(16, ge=0, description="instances smaller than this (pixels) are dropped")
