"""Checkpoints as safetensors (weights) + JSON (metadata); training state loaded with weights_only=True."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histowsss.engine.atomic import atomic_path, write_json


def save_weights(path: Path, model: nn.Module, meta: dict[str, Any] | None = None) -> None:
    """Save a model's state dict to ``path`` (.safetensors) and ``meta`` next to it (.json)."""
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt"})
    if meta is not None:
        write_json(path.with_suffix(".json"), meta)


def load_weights(path: Path, model: nn.Module, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load weights saved by ``save_weights``; returns the metadata (empty if none)."""
    from safetensors.torch import load_file

    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found; run the training step first")
    model.load_state_dict(load_file(str(path), device=str(device)))
    meta = path.with_suffix(".json")
    return json.loads(meta.read_text()) if meta.exists() else {}


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    """Save optimizer/scheduler/epoch state for resuming (plain tensors and numbers only)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_train_state(path: Path) -> dict[str, Any] | None:
    """Load a training state saved by ``save_train_state`` (weights_only=True), or None."""
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
