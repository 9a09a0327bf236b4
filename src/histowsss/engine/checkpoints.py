"""Checkpoints as safetensors (weights) + JSON (metadata); training state loaded with weights_only=True."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histowsss.engine.atomic import CorruptFileError, atomic_path, write_json


def save_weights(path: Path, model: nn.Module, meta: dict[str, Any] | None = None,
                 stamp: dict[str, str] | None = None, skip_prefix: str | None = None) -> None:
    """Save a model's state dict to ``path`` (.safetensors) and ``meta`` next to it (.json); ``stamp`` goes into
    the safetensors header (see :func:`weights_stamp`). ``skip_prefix``: leave out the tensors under it (a frozen
    backbone the loader rebuilds from its own weights; recorded in the header as ``skipped``)."""
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
          if skip_prefix is None or not k.startswith(skip_prefix)}
    if skip_prefix is not None:
        stamp = {**(stamp or {}), "skipped": skip_prefix}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt", **(stamp or {})})
    if meta is not None:
        write_json(path.with_suffix(".json"), meta)


def load_weights(path: Path, model: nn.Module, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load weights saved by ``save_weights``; returns the metadata (empty if none). A file saved with
    ``skip_prefix`` leaves the model's tensors under that prefix as they are (every other one must be in it)."""
    from safetensors.torch import load_file

    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found; run the training step first")
    try:
        sd = load_file(str(path), device=str(device))
    except OSError:  # permissions, a vanished disk: not the file's fault
        raise
    except Exception as e:  # safetensors' own error type: truncated, empty, not a safetensors file
        raise CorruptFileError(f"{path}: unreadable checkpoint ({e}); delete it and re-run the step that wrote it "
                               "with --overwrite") from None
    skipped = weights_stamp(path).get("skipped")
    if skipped:
        missing, unexpected = model.load_state_dict(sd, strict=False)
        wrong = [k for k in missing if not k.startswith(skipped)] + list(unexpected)
        if wrong:
            raise RuntimeError(f"{path}: does not fit the model ({len(wrong)} tensors, e.g. {wrong[0]})")
    else:
        model.load_state_dict(sd)
    meta = path.with_suffix(".json")
    return json.loads(meta.read_text()) if meta.exists() else {}


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    """Save optimizer/scheduler/epoch state for resuming (plain tensors and numbers only)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_train_state(path: Path) -> dict[str, Any] | None:
    """Load a training state saved by ``save_train_state`` (weights_only=True), or None; an unreadable one raises
    CorruptFileError naming it."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, MemoryError):  # permissions, a vanished disk, no memory: not the file's fault
        raise
    except Exception as e:  # truncated or empty file (pickle/zip errors), or not a state this code wrote
        raise CorruptFileError(f"{path}: unreadable training state ({e}); delete it (the step then starts over)"
                               ) from None


def weights_stamp(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header ({} if the file is missing or unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # missing, truncated: no stamp
        return {}


def previous_weights_path(last_path: Path) -> Path:
    """Where the weights of the epoch before are kept while a resume point is replaced (``<stem>.prev.safetensors``)."""
    return last_path.with_name(f"{last_path.stem}.prev{last_path.suffix}")


def save_resume_point(last_path: Path, state_path: Path, model: nn.Module, state: dict[str, Any],
                      skip_prefix: str | None = None) -> None:
    """After an epoch: the weights (``last_path``) and the optimiser state (``state_path``, with ``config_hash`` and
    ``epoch``); the weights carry the same config hash and epoch, so a kill between the two writes is detected, and
    the epoch before's weights are kept aside (:func:`previous_weights_path`) until the new state is written, so
    that such a kill resumes from the epoch before instead of starting over. ``skip_prefix``: a frozen part the
    resumed step rebuilds itself, not rewritten every epoch."""
    prev = previous_weights_path(last_path)
    before = weights_stamp(last_path)
    if before.get("config_hash") == str(state["config_hash"]) and before.get("epoch") == str(int(state["epoch"]) - 1):
        os.replace(last_path, prev)  # the epoch before's pair: kept until this one is complete
    else:  # a later epoch's weights left by a kill (resumed from the kept pair), or none: the kept pair stays
        last_path.unlink(missing_ok=True)
    save_weights(last_path, model, stamp={"config_hash": str(state["config_hash"]), "epoch": str(state["epoch"])},
                 skip_prefix=skip_prefix)
    save_train_state(state_path, state)
    prev.unlink(missing_ok=True)


def resume_point(last_path: Path, state_path: Path, config_hash: str, overwrite: bool,
                 is_main: bool = True, weights_file: str | None = None) -> dict[str, Any] | None:
    """The training state to continue from: None to start over. ``overwrite`` discards an earlier run's resume files
    (rank 0 deletes them, so a later resume cannot pick them up); a state of another config, or one whose weights are
    not of its epoch (a kill between the two writes, a run of another config killed after its first weights), is
    not resumed. A kill between the two writes finds the epoch before's weights kept aside: the state's epoch then
    resumes from them. The weights to load are the returned state's ``"weights_path"``. ``weights_file``: the
    fingerprint of the local weights file the network is built from now (None without one; for 'imagenet' the
    package's file); a state saved on another file's weights starts over, saying so."""
    prev = previous_weights_path(last_path)
    if overwrite:
        if is_main:
            for p in (last_path, state_path, prev):
                p.unlink(missing_ok=True)
        return None
    try:
        state = load_train_state(state_path)
    except CorruptFileError as e:  # only a resume point: start over, saying why
        warnings.warn(f"{e}; not resumed", stacklevel=2)
        return None
    if state is None or state.get("config_hash") != config_hash:
        return None
    weights = next((p for p in (last_path, prev) if weights_stamp(p).get("config_hash") == config_hash
                    and weights_stamp(p).get("epoch") == str(state.get("epoch"))), None)
    if weights is None:
        if is_main and (last_path.exists() or prev.exists()):
            print(f"{state_path.name}: no weights of its epoch {int(state.get('epoch', -1)) + 1} beside it; not "
                  "resumed: training starts over")
        return None
    # (a state saved before the file was recorded says nothing about it)
    if "weights_file" in state and state["weights_file"] != weights_file:
        if is_main:
            print(f"{state_path.name}: trained on other weights (a file or weights package with other contents) "
                  "than there are now; not resumed: training starts over")
        return None
    return {**state, "weights_path": str(weights)}
