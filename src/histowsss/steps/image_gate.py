"""Image-level gating of segmentation probabilities by the CAM stage's classifier (``eval_seg.image_gate``).

With image-level labels (e.g. benign / malignant) the segmentation network decides *where* and, implicitly,
*whether*; the CAM classifier, trained on whole images, is the better judge of *whether* (GlaS test AUC 0.99).
A class the classifier calls absent from an image (image-level probability below eval_cam's chosen gate, the
same cut eval_cam uses on unlabelled images) gets probability 0 before the argmax; background is never removed.
eval_seg reads the probabilities make_cam stored (cams/<name>.npz); predict computes them for new images with
the run's CAM network and make_cam's scales, so both give the same labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from histowsss.config import RunConfig
from histowsss.engine.atomic import read_npz
from histowsss.engine.run_dir import StepError


def chosen_gate(run_path: Path, cfg: RunConfig | None = None) -> float:
    """The class-presence cut: ``eval_seg.image_gate_cut`` when set, else eval_cam's chosen one
    (metrics/cam.json ``chosen_gate``)."""
    if cfg is not None and cfg.eval_seg.image_gate_cut is not None:
        return float(cfg.eval_seg.image_gate_cut)
    path = run_path / "metrics" / "cam.json"
    if not path.exists():
        raise StepError(f"{path} missing: eval_seg.image_gate needs eval_cam's chosen gate; run the CAM stage "
                        "(histowsss run CONFIG --to eval_cam) or set eval_seg.image_gate=false")
    return float(json.loads(path.read_text())["chosen_gate"])


def absent_classes(probs: np.ndarray, classes: list[str], names: list[str], gate: float) -> list[int]:
    """Indices into ``names`` of the classifier classes whose image-level probability is below ``gate``."""
    return [names.index(str(c)) for c, p in zip(classes, probs) if float(p) < gate and str(c) in names]


def stored_absent(run_path: Path, name: str, names: list[str], gate: float,
                  expected_hash: str | None = None) -> list[int]:
    """Absent classes of one image from make_cam's cams/<name>.npz (``expected_hash``: make_cam's config hash the
    file must carry)."""
    path = run_path / "cams" / f"{name}.npz"
    if not path.exists():
        raise StepError(f"{path} missing: eval_seg.image_gate needs make_cam's image probabilities for every "
                        "evaluated image (make_cam.splits must include eval_seg's splits)")
    z = read_npz(path, "delete it and re-run make_cam with --overwrite")
    if expected_hash is not None:
        from histowsss.steps.common import check_cam_hash

        check_cam_hash(z, path, expected_hash)
    return absent_classes(z["probs"], list(z["classes"]), names, gate)


def apply_gate(probs: np.ndarray, absent: list[int], background: int | None) -> np.ndarray:
    """A copy of (C, H, W) probabilities with the absent classes (never background) set to 0 and the rest
    renormalised to sum to 1 per pixel; unchanged when that would remove every class (no background class)."""
    out = probs.copy()
    drop = [k for k in absent if k != background]
    if len(set(drop)) >= out.shape[0]:  # no background class and every class called absent: the network decides
        return out
    if drop:
        out[drop] = 0
        total = out.sum(0, keepdims=True)
        np.divide(out, total, out=out, where=total > 0)
    return out


class ClassifierGate:
    """The run's CAM classifier for new images (``histowsss predict``): absent classes of one image."""

    def __init__(self, cfg: RunConfig, run_path: Path, device):
        import torch

        from histowsss.data.transforms import Normalizer
        from histowsss.engine.run_dir import RunDir
        from histowsss.steps.common import load_cam_network

        self.cfg, self.device = cfg, device
        self.gate = chosen_gate(run_path, cfg)
        self.model = load_cam_network(cfg, RunDir(run_path, cfg), device)
        if cfg.backbone.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.norm = Normalizer(self.model.backbone.mean, self.model.backbone.std)
        from histowsss.steps.make_cam import vit_scales_note

        note = vit_scales_note(self.model, cfg, torch.device(device))
        if note:  # the gate runs the classifier on every image at make_cam's scales
            print(f"image gate: {note}", flush=True)

    def absent(self, img: np.ndarray) -> list[int]:
        """Absent classes of ``img`` (as load_image returns it), with make_cam's scales, flip and patches."""
        from histowsss.steps.common import output_classes
        from histowsss.steps.make_cam import image_cam

        _, logits = image_cam(self.model, img, self.cfg, self.norm, self.device)
        probs = 1 / (1 + np.exp(-logits))
        return absent_classes(probs, output_classes(self.cfg), self.cfg.data.classes.names, self.gate)
