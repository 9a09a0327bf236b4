"""Which process of a torchrun launch this is, from its environment: read before any step, without loading torch
(the process group itself: :mod:`histowsss.engine.distributed`)."""

from __future__ import annotations

import os
import sys


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the environment torchrun sets (0, 1, 0 without it)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise RuntimeError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({e}); launch with torchrun") from None
    if world < 1 or not 0 <= rank < world:
        raise RuntimeError(f"invalid RANK={rank} for WORLD_SIZE={world}; launch with torchrun")
    return rank, world, local


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed); cheap, reads the environment / process group only (a process
    group exists only once torch.distributed was loaded: this does not load it)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_world()[0] == 0
