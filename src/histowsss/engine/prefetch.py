"""Build training batches ahead of the accelerator on a thread pool (numpy releases the GIL in its heavy ops).

On a GPU the crops (cut, resize, HED jitter, dihedral) would otherwise be made one by one in the training
loop while the device waits. Each item carries its own seed, so the batches are identical for any number of
threads, including none.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def auto_threads(requested: int | None) -> int:
    """``None`` -> half the CPU cores (at most 8; 0 on a machine with <= 2 cores), else ``requested``."""
    if requested is not None:
        return max(0, int(requested))
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores // 2)


def prefetch_batches(chunks: Iterable[Sequence[T]], make: Callable[[T], R], threads: int,
                     depth: int = 2) -> Iterator[list[R]]:
    """Yield ``[make(item) for item in chunk]`` for each chunk, in order, up to ``depth`` chunks ahead.

    ``threads == 0`` runs everything in the caller's thread (no pool). Exceptions surface at the chunk
    that raised them. Closing the generator early cancels the chunks not started and waits for the running ones,
    so nothing reads from a source (e.g. a slide) after the caller has closed it.
    """
    if threads <= 0:
        for chunk in chunks:
            yield [make(item) for item in chunk]
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="histowsss-prefetch") as pool:
        pending: deque[list[Future]] = deque()
        it = iter(chunks)
        exhausted = False

        def fill() -> None:
            nonlocal exhausted
            while not exhausted and len(pending) < max(1, depth):
                try:
                    chunk = next(it)
                except StopIteration:
                    exhausted = True
                    return
                pending.append([pool.submit(make, item) for item in chunk])

        try:
            fill()
            while pending:
                futures = pending.popleft()
                fill()
                yield [f.result() for f in futures]
        finally:  # closed early (the consumer failed): drop what has not started, wait for what runs
            for futures in pending:
                for f in futures:
                    f.cancel()
