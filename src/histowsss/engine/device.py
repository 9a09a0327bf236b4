"""Device selection (no .cuda() calls in algorithms: everything follows the tensors' device)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise the named device (clear error if unavailable)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device=cpu or auto")
    return dev


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU has bfloat16 instructions (x86 AVX512-BF16 or AMX-BF16; ARM BF16), or None when it cannot be
    told (no ``/proc/cpuinfo``). Without them bfloat16 autocast on the CPU is emulated, slower than float32."""
    from pathlib import Path

    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if not flags:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


_CHECKED: set[str] = set()


def autocast_bf16(device: torch.device, enabled: bool):
    """bfloat16 autocast on ``device`` when ``enabled``; a no-op context otherwise (also on devices without
    autocast, where even a disabled ``torch.autocast`` raises)."""
    import contextlib

    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


# the options `histowsss predict --cpu-amp/--no-cpu-amp` decides for one call
PREDICT_OPTIONS = ("eval_seg.cpu_amp", "make_cam.cpu_amp")


def bf16_enabled(device: torch.device, cuda: bool, cpu: bool, option: str, warn: bool = True) -> bool:
    """Whether bfloat16 autocast is on for ``device``: ``cuda`` on a GPU, ``cpu`` on the CPU (other devices: off).
    When the CPU option is on but the CPU has no bfloat16 instructions, says so (``warn``) once per process and
    option, naming the option and where to turn it off."""
    if device.type == "cuda":
        return cuda
    if device.type != "cpu" or not cpu:
        return False
    if warn and option not in _CHECKED:
        _CHECKED.add(option)
        if cpu_has_bf16() is False:
            predict = "; `histowsss predict --no-cpu-amp`" if option in PREDICT_OPTIONS else ""
            print(f"{option} is on but this CPU has no bfloat16 instructions (AVX512-BF16 / AMX): autocast is emulated "
                  f"and slower than float32; set {option}=false (`--set {option}=false` on `histowsss run`{predict})")
    return True
