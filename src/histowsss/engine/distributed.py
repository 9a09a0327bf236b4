"""Plain torch DDP so one training command runs on CPU, one GPU or several GPUs (``torchrun``).

``torchrun --nproc_per_node=N`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads
them, starts a process group (nccl on CUDA, gloo on CPU) and pins each process to ``cuda:LOCAL_RANK``. Without
those variables (or with ``WORLD_SIZE=1``) everything is a no-op: one process, the configured device.

Conventions that the training steps follow:

* every rank draws the same epoch plan (same seed) and keeps its shard (:meth:`DistContext.shard`), padded so
  that every rank runs the same number of steps (DDP needs matching collective calls);
* gradients are averaged by DDP; BatchNorm buffers are broadcast from rank 0 at each forward (DDP default), so
  all ranks hold identical weights;
* only rank 0 writes files (status records, logs, checkpoints) and shows progress bars.
"""

from __future__ import annotations

import atexit
import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

from histowsss.engine.device import resolve_device
from histowsss.engine.ranks import env_world

T = TypeVar("T")


@dataclass
class DistContext:
    """Where this process stands: rank, world size, device and whether it started the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP-wrap ``model`` (already on ``self.device``) when distributed; unchanged otherwise."""
        if not self.distributed:
            return model
        import warnings

        from torch.nn.parallel import DistributedDataParallel as DDP

        # benign: depthwise-conv weights (C, 1, k, k) have a size-1 dim whose stride differs from the bucket's
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        if self.device.type == "cuda":
            return DDP(model, device_ids=[self.device.index], output_device=self.device.index)
        return DDP(model)

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (the same list on every rank), padded by wrapping around so that all
        ranks get ``ceil(len / world_size)`` items (as torch's DistributedSampler does)."""
        items = list(items)
        if not self.distributed or not items:
            return items
        per_rank = -(-len(items) // self.world_size)
        padded = items + [items[i % len(items)] for i in range(per_rank * self.world_size - len(items))]
        return padded[self.rank :: self.world_size]

    def all_reduce_mean(self, value: float) -> float:
        """Mean of a scalar over ranks (the value itself when not distributed)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of a list of numbers over ranks."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.tolist()]

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over ranks.

        DDP broadcasts rank 0's buffers at the start of every forward, but each rank's last forward updates its
        own copy; call this before saving so that every rank (and the checkpoint) holds the same statistics.
        """
        if not self.distributed:
            return
        with torch.no_grad():
            self._average_buffers(model)

    def _average_buffers(self, model: torch.nn.Module) -> None:
        for b in unwrap(model).buffers():
            if b.is_floating_point():
                t = b.detach().to(self._comm_device, copy=True)
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
                b.copy_(t.to(b.device) / self.world_size)

    def broadcast_object(self, obj: Any) -> Any:
        """``obj`` of rank 0 on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_shared_folder(self, folder: Path | str) -> None:
        """Raise on every rank unless every rank sees ``folder`` as the one rank 0 writes to.

        Ranks other than 0 read the run folder (labels, finished checkpoints) and only rank 0 writes it; on several
        nodes it must therefore sit on a file system all nodes share, at the same path. Rank 0 writes a fresh token
        into ``folder``; a rank that reads no token, or another one, names itself and every rank stops with the
        same message (rather than one rank failing later while the others wait in a collective call).
        """
        if not self.distributed:
            return
        from histowsss.engine.atomic import write_text

        marker = Path(folder) / ".ddp_shared_check"
        token, failure = (secrets.token_hex(8) if self.is_main else None), None
        if self.is_main:
            try:
                write_text(marker, token)
            except OSError as e:  # told to every rank below, so that none waits for rank 0 forever
                failure = f"rank 0 cannot write into the run folder {folder}: {e}"
        token, main_folder, failure = self.broadcast_object((token, str(Path(folder).resolve()), failure))
        if failure:
            raise RuntimeError(failure)
        try:
            seen = marker.read_text()
        except OSError:
            seen = None
        flags = [0.0] * self.world_size
        flags[self.rank] = 0.0 if seen == token else 1.0
        missing = [r for r, f in enumerate(self.all_reduce_sum(flags)) if f > 0]
        if self.is_main:
            marker.unlink(missing_ok=True)
        if missing:
            raise RuntimeError(
                f"rank(s) {missing} do not see the run folder {main_folder} that rank 0 writes to; with several nodes, "
                "put the run folder on a file system every node mounts at the same path (NFS, Lustre, ...)")

    def barrier(self) -> None:
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def check_same(self, value: str, what: str) -> None:
        """Raise on every rank unless every rank holds rank 0's ``value`` (a step's settings hash, say): ranks started
        with other settings would draw other batches and wait for each other in mismatched collective calls until the
        timeout, with nothing said."""
        if not self.distributed:
            return
        main = self.broadcast_object(value)
        flags = [0.0] * self.world_size
        flags[self.rank] = 0.0 if value == main else 1.0
        differ = [r for r, f in enumerate(self.all_reduce_sum(flags)) if f > 0]
        if differ:
            raise RuntimeError(f"rank(s) {differ} run with other {what} than rank 0: start every process with the "
                               "same config file and --set options (on several nodes, the same files)")

    def close(self) -> None:
        """End this context's use of the process group. The group itself stays up until the process exits (see
        :func:`init_distributed`), so that the next distributed step of the same launch joins it again."""
        self.owns_group = False

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


TIMEOUT_ENV = "HISTOWSSS_DDP_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 120.0


def _timeout() -> timedelta:
    """How long a rank waits in a collective call: ``HISTOWSSS_DDP_TIMEOUT_MIN`` minutes (default 120). Between
    two distributed steps of one launch the other ranks wait for rank 0 to evaluate the network alone (eval_seg),
    which on a large test set takes longer than torch's default (30 min for gloo, 10 for nccl)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        minutes = float(raw) if raw else DEFAULT_TIMEOUT_MIN
    except ValueError:
        raise RuntimeError(f"{TIMEOUT_ENV}={raw!r}: give the minutes as a number") from None
    if not 0 < minutes < 1e7:
        raise RuntimeError(f"{TIMEOUT_ENV}={raw!r}: the minutes must be positive and finite")
    return timedelta(minutes=minutes)


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def init_distributed(device_name: str = "auto") -> DistContext:
    """Context for this process; starts the process group when ``WORLD_SIZE > 1`` (and none is running).

    The group is started once per process and destroyed when the process exits: every distributed step of a launch
    (train_seg, then train_seg_supervised) joins the same group. Destroying it after a step and starting it again
    made the next step's ranks meet the old group's addresses in torchrun's store (gloo: "connection refused") while
    rank 0 was still evaluating.

    Device: with CUDA, rank r uses ``cuda:LOCAL_RANK`` (``device`` must then be 'auto' or 'cuda'); on CPU
    every rank uses the CPU with the gloo backend. ``MASTER_ADDR`` / ``MASTER_PORT`` come from torchrun.
    """
    rank, world, local = env_world()
    if world == 1:
        return DistContext(device=resolve_device(device_name))
    base = resolve_device(device_name)
    if base.type == "cuda":
        if device_name not in ("auto", "cuda"):
            raise RuntimeError(f"device={device_name!r} pins one GPU; under torchrun use device=auto or cuda "
                               "(each process takes cuda:LOCAL_RANK)")
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s) are visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    owns = False
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set; launch with torchrun")
        kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world, "timeout": _timeout()}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
        atexit.register(_destroy_group)
        owns = True
    else:
        backend = dist.get_backend()
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device, backend=backend, owns_group=owns)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or ``model``)."""
    return model.module if hasattr(model, "module") and isinstance(
        model, torch.nn.parallel.DistributedDataParallel) else model
