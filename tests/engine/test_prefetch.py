import numpy as np
import pytest

from histowsss.engine.prefetch import auto_threads, prefetch_batches


def _make(seed: int) -> float:
    return float(np.random.default_rng(seed).normal())


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_batches_in_order_and_identical_for_any_thread_count(threads):
    chunks = [list(range(b, b + 5)) for b in range(0, 40, 5)]
    got = list(prefetch_batches(chunks, _make, threads, depth=3))
    assert got == [[_make(s) for s in c] for c in chunks]


def test_error_surfaces_at_its_chunk():
    def make(i):
        if i == 7:
            raise ValueError("bad crop 7")
        return i

    it = prefetch_batches([[0, 1], [2, 3], [6, 7]], make, threads=2)
    assert next(it) == [0, 1]
    assert next(it) == [2, 3]
    with pytest.raises(ValueError, match="bad crop 7"):
        next(it)


def test_auto_threads():
    assert auto_threads(0) == 0 and auto_threads(5) == 5
    assert 0 <= auto_threads(None) <= 8


def test_closing_early_waits_for_running_reads_and_starts_no_more():
    """A consumer that fails after the first chunk: once the generator is closed nothing is running or started."""
    import threading
    import time

    from histowsss.engine.prefetch import prefetch_batches

    lock = threading.Lock()
    started: list[int] = []
    finished: list[int] = []

    def make(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.05)
        with lock:
            finished.append(i)
        return i

    gen = prefetch_batches(([i] for i in range(50)), make, threads=1, depth=4)
    assert next(gen) == [0]  # chunks 1-4 are queued now, chunk 1 running
    gen.close()
    with lock:
        assert sorted(started) == sorted(finished)  # nothing still reading after close
        assert len(started) <= 2  # the queued chunks were cancelled, not run
