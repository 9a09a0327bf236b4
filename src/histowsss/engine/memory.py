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
    known = [v for v in (_host_available(), cgroup_available()) if v is not None]
    return min(known) if known else None


def _host_available() -> int | None:
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


def cgroup_available(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """Memory this process's control groups still allow (a container's or a batch job's limit, which the host's
    free memory does not show), or None when no group sets a limit or none can be read.

    Reads cgroup v2 (``memory.max`` / ``memory.current``) or v1 (``memory.limit_in_bytes`` /
    ``memory.usage_in_bytes``) of the process's own group and of every group above it (a parent's limit binds its
    children); a group's reclaimable page cache (``inactive_file``, v1's ``total_inactive_file`` of the subtree)
    counts as free, as the kernel would reclaim it.
    """
    best: int | None = None
    for folder, v1 in _cgroup_folders(root, proc_cgroup):
        limit_f, usage_f = ("memory.limit_in_bytes", "memory.usage_in_bytes") if v1 else ("memory.max", "memory.current")
        try:
            limit_text = (folder / limit_f).read_text().strip()
            usage = int((folder / usage_f).read_text().strip())
        except (OSError, ValueError):
            continue
        if not limit_text.isdigit() or int(limit_text) >= 2**60:
            continue  # "max" (v2) or a huge number (v1): no limit at this level
        stat: dict[str, int] = {}
        try:
            for line in (folder / "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if value.strip().isdigit():
                    stat[key] = int(value)
        except OSError:
            pass
        # v1's usage counts the whole subtree, so its reclaimable cache is the subtree's (total_inactive_file);
        # v2's inactive_file already is
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        room = max(int(limit_text) - usage + inactive, 0)
        best = room if best is None else min(best, room)
    return best


def _cgroup_folders(root: Path, proc_cgroup: Path) -> list[tuple[Path, bool]]:
    """The memory cgroup folders of this process, its own group first, then each parent up to the mount
    (``(folder, is_v1)``); a group path the mount does not show (a container's namespace) starts at the mount."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    out: list[tuple[Path, bool]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, rel = parts
        if "memory" in controllers.split(","):
            mount, v1 = root / "memory", True
        elif hid == "0" and controllers == "" and _v2_has_memory(root):
            mount, v1 = root, False
        else:
            continue
        folder = mount / rel.strip("/")
        if not folder.is_dir():
            folder = mount
        while True:
            out.append((folder, v1))
            if folder == mount or mount not in folder.parents:
                break
            folder = folder.parent
    return out


def _v2_has_memory(root: Path) -> bool:
    """Whether ``root`` is a cgroup v2 mount with the memory controller (not the memory-less one of a hybrid)."""
    try:
        return "memory" in (root / "cgroup.controllers").read_text().split()
    except OSError:
        return False


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
