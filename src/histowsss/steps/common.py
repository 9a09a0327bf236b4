"""Helpers shared by steps: the classifier's output classes, building/loading the CAM network."""

from __future__ import annotations

from typing import TYPE_CHECKING

from histowsss.config import RunConfig
from histowsss.data.manifest import Sample, read_manifest
from histowsss.engine.run_dir import RunDir

if TYPE_CHECKING:
    import torch


def output_classes(cfg: RunConfig) -> list[str]:
    """Class names the classifier predicts: all classes, or all but background in 'absence' mode."""
    c = cfg.data.classes
    if cfg.train_cam.background_mode == "absence" and c.background is not None:
        return [n for n in c.names if n != c.background]
    return list(c.names)


def cam_hash(cfg: RunConfig) -> str:
    """Config hash that ties CAM-stage files to their inputs."""
    return cfg.step_hash("data", "backbone", "train_cam")


def build_cam_network(cfg: RunConfig, load_pretrained: bool = True) -> torch.nn.Module:
    """The CAM network of ``cfg``; ``load_pretrained=False`` when a trained checkpoint is loaded into it next (the
    backbone's pretrained weights file need not exist then: a model exported to another machine)."""
    from histowsss.models.registry import create_cam_network

    return create_cam_network(cfg.train_cam.network, backbone=cfg.backbone, num_outputs=len(output_classes(cfg)),
                              head_layers=cfg.train_cam.head_layers, head_channels=cfg.train_cam.head_channels,
                              dropout=cfg.train_cam.dropout, options=cfg.train_cam.rpnet,
                              pooling=cfg.train_cam.pooling, topk_fraction=cfg.train_cam.topk_fraction,
                              load_pretrained=load_pretrained)


def load_cam_network(cfg: RunConfig, run: RunDir, device: torch.device) -> torch.nn.Module:
    """The trained CAM network of a run (requires a finished train_cam with the same config)."""
    from histowsss.engine.checkpoints import load_weights
    from histowsss.models.fuse import inference_model

    run.require("train_cam", cam_hash(cfg), "this step")
    model = build_cam_network(cfg, load_pretrained=False)
    load_weights(run.path / "checkpoints" / "cam.safetensors", model, device="cpu")
    return inference_model(model, device)


def samples_for(cfg: RunConfig, splits: list[str]) -> list[Sample]:
    return read_manifest(cfg.data, splits=splits)


def all_splits(cfg: RunConfig) -> list[str]:
    d = cfg.data
    return list(dict.fromkeys(d.train_splits + d.val_splits + d.test_splits))


def check_cam_hash(arrays: dict, path, expected: str) -> None:
    """StepError when the CAM file ``path`` (its ``arrays``) was made by make_cam with another configuration than
    ``expected`` (files without a recorded hash pass)."""
    from histowsss.engine.run_dir import StepError

    if "config_hash" in arrays and str(arrays["config_hash"]) != expected:
        raise StepError(f"{path}: CAM from another configuration (hash {arrays['config_hash']} != {expected}); "
                        "re-run make_cam with --overwrite")
