"""Helpers shared by the IRN steps (cam_to_ir_label ... eval_sem_seg): images, CAM files, resuming, IRN model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histowsss.config import RunConfig
from histowsss.data.crops import image_targets
from histowsss.data.label_gate import cell_centres, sample_gate, uses_patch_gate
from histowsss.data.manifest import Sample
from histowsss.engine.atomic import read_npz
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.steps import make_cam
from histowsss.steps.common import check_cam_hash, output_classes, samples_for

if TYPE_CHECKING:
    import torch

IGNORE = 255
STRIDE = make_cam.STRIDE


def irn_splits(cfg: RunConfig) -> list[str]:
    """Splits the IRN steps work on: ``ir_label.splits`` or train + val."""
    d = cfg.data
    return list(cfg.ir_label.splits or dict.fromkeys(d.train_splits + d.val_splits))


def irn_samples(cfg: RunConfig) -> list[Sample]:
    samples = samples_for(cfg, irn_splits(cfg))
    if not samples:
        raise StepError(f"no images in splits {irn_splits(cfg)} for the IRN steps; "
                        "check ir_label.splits / data.*_splits")
    return samples


def background_id(cfg: RunConfig) -> int:
    """Class id of background (index 0 when no background class is configured, as eval_cam)."""
    b = cfg.data.classes.background_index
    return 0 if b is None else b


def cam_class_ids(cfg: RunConfig) -> list[int]:
    """Class id of every CAM channel."""
    return [cfg.data.classes.index(n) for n in output_classes(cfg)]


def presence(cfg: RunConfig, samples: list[Sample]) -> np.ndarray:
    """(N, K) bool: the CAM channels each image is labelled with."""
    keep = cam_class_ids(cfg)
    return image_targets(samples, cfg.data)[:, keep] > 0.5


def gate_sections(cfg: RunConfig) -> tuple[str, ...]:
    """Config sections a step's labels depend on through the label gating (eval_cam, when it is per patch)."""
    return ("eval_cam",) if uses_patch_gate(cfg) else ()


def gate_on_grid(cfg: RunConfig, sample: Sample, grid: tuple[int, int]) -> np.ndarray | None:
    """The sample's patch-label gate (C, h, w) at the stride-4 cell centres, or None (image-level gating)."""
    allowed = sample_gate(cfg, sample)
    return None if allowed is None else cell_centres(allowed, grid, STRIDE)


def cam_mode(cfg: RunConfig) -> str:
    from histowsss.steps.eval_cam import cam_mode as _mode

    return _mode(cfg)


def require_cams(cfg: RunConfig, run: RunDir, samples: list[Sample], for_step: str) -> str:
    """Check that make_cam finished with this config and wrote a CAM for every sample; returns its hash."""
    h = make_cam.config_hash(cfg)
    run.require("make_cam", h, for_step)
    missing = [s.name for s in samples if not make_cam.cam_path(run, s.name).exists()]
    if missing:
        raise StepError(f"{for_step}: {len(missing)} CAM file(s) missing in {run.path / 'cams'} "
                        f"(e.g. {', '.join(missing[:3])}); make_cam.splits must include {irn_splits(cfg)}; "
                        "re-run make_cam with --overwrite")
    return h


def load_cam(run: RunDir, name: str, expected_hash: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(cam (K, h, w) float32, probs (K,), image size) of one image; StepError if it is from another config."""
    p = make_cam.cam_path(run, name)
    if not p.exists():
        raise StepError(f"{p}: CAM missing; re-run make_cam")
    z = read_npz(p, "delete it and re-run make_cam with --overwrite")
    check_cam_hash(z, p, expected_hash)
    return z["cam"].astype(np.float32), z["probs"], (int(z["size"][0]), int(z["size"][1]))


def grid_size(size: tuple[int, int]) -> tuple[int, int]:
    return -(-size[0] // STRIDE), -(-size[1] // STRIDE)


def resuming(run: RunDir, step: str, config_hash: str, overwrite: bool) -> bool:
    """True when an interrupted run of ``step`` with the same config left outputs that can be kept."""
    prev = run.status(step)
    return bool(not overwrite and prev is not None and prev.get("state") in ("running", "failed")
                and prev.get("config_hash") == config_hash)


def fresh_dir(run: RunDir, name: str, keep: bool) -> Path:
    """The output folder ``name`` of a step, emptied unless ``keep`` (resuming with the same config)."""
    d = run.path / name
    if d.exists() and not keep:
        shutil.rmtree(d)
    return run.sub(name)


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def irn_path(run: RunDir) -> Path:
    return run.path / "checkpoints" / "irn.safetensors"


def build_irn(cfg: RunConfig):
    from histowsss.models.irnet import IRNet

    t = cfg.train_irn
    return IRNet(cfg.backbone, edge_channels=t.edge_channels, dp_channels=t.dp_channels)


def build_irn_as_trained(cfg: RunConfig):
    """The IRN as train_irn built it: seeded with train_irn.seed, so a backbone without pretrained weights
    (``backbone.weights: none``; frozen, not saved with the heads) is the same random network the heads were
    trained on. The caller's random state is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train_irn.seed)
        return build_irn(cfg)


def load_irn(cfg: RunConfig, run: RunDir, device: torch.device):
    """The trained IRN of a run (heads from checkpoints/irn.safetensors, frozen backbone from its config)."""
    from histowsss.engine.checkpoints import load_weights
    from histowsss.models.fuse import inference_model

    model = build_irn_as_trained(cfg)
    path = irn_path(run)
    if not path.exists():
        raise StepError(f"{path}: IRN checkpoint missing; run train_irn")
    try:
        load_weights(path, model.head)
    except RuntimeError as e:
        raise StepError(f"{path}: does not match the IRN of this config ({str(e)[:200]}); re-run train_irn") from None
    return inference_model(model, device)
