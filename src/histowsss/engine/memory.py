"""Will a feature cache fit? Free memory of a device, and an early, clear refusal when a cache would not fit.

train_cam and train_irn keep frozen-backbone features of every training image (and of several augmented copies)
in memory. On a large tile set that can need more than the machine has, which would otherwise show as an
out-of-memory kill after a long caching pass. The caches measure their first image and ask here before going on.
"""

from __future__ import annotations

from pathlib import Path

import torch

# the share of the free memory a cache may take: training needs room beside it (model, batches, optimiser)
CACHE_SHARE = 0.8


def free_bytes(device: torch.device) -> int | None:
    """Free memory where tensors on ``device`` live (host RAM for the CPU), or None when it cannot be read."""
    if device.type == "cuda":
        try:
            # memory torch's allocator holds but does not use is free for the cache too
            idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            return int(torch.cuda.mem_get_info(device)[0]) + int(idle)
        except Exception:
            return None
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


class CacheTooLarge(RuntimeError):
    """A feature cache would not fit into the free memory of its device."""


def image_pixels(images: list, scale: float = 1.0, min_side: int = 0) -> list[float]:
    """Pixels of each image (file headers only) at ``scale``, each side at least ``min_side`` (padded images)."""
    from histowsss.data.io import image_size

    out = []
    for path in images:
        h, w = image_size(path)
        out.append(max(h * scale, min_side) * max(w * scale, min_side))
    return out


def check_cache_fits(step: str, first_bytes: int, pixels: list[float], device: torch.device, fix: str) -> None:
    """Refuse, before the rest is cached, a cache whose size extrapolated from its first image (``first_bytes``,
    ``pixels[0]``) by the pixels of every image (``pixels``) exceeds ``CACHE_SHARE`` of what is free now (the
    first image's share, already held, counted as free)."""
    n_images = len(pixels)
    if n_images <= 1:
        return
    free = free_bytes(device)
    if free is None:
        return
    need = first_bytes * sum(pixels) / max(pixels[0], 1.0)
    room = (free + first_bytes) * CACHE_SHARE
    if need > room:
        raise CacheTooLarge(
            f"{step}: caching features of {n_images} images needs about {_gib(need)} (extrapolated from the first "
            f"image, {first_bytes / 2**20:.1f} MiB), but only {_gib(free + first_bytes)} is free on {device.type}; "
            f"{fix}")
