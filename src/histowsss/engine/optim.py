"""The optimiser of the segmentation network: AdamW, on PyTorch's fused kernel where the weights' device has one."""

from __future__ import annotations

from typing import Any, Iterable

import torch

# devices with a fused AdamW kernel (torch.utils._foreach_utils._get_fused_kernels_supported_devices, not public)
_FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu", "hpu", "mtia")


def fused_supported(tensors: list[torch.Tensor]) -> bool:
    """Whether every tensor is a floating-point one on a device with PyTorch's fused AdamW."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = tuple(_get_fused_kernels_supported_devices())
    except ImportError:  # a private helper: where it moves, the list it held in torch 2.4-2.14
        devices = _FUSED_DEVICES
    return bool(tensors) and all(p.is_floating_point() and p.device.type in devices for p in tensors)


def adamw(params: Iterable[Any], weight_decay: float, fused: bool = True, **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params`` (tensors or parameter groups), with ``fused=True`` where
    :func:`fused_supported`: one kernel over all weights, where PyTorch's default on the CPU updates them one tensor
    at a time (``bench/optimizer_step_cost.py``). The same update up to float rounding."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    if fused and fused_supported(tensors):
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, weight_decay=weight_decay, **kwargs)
