"""engine/memory: a feature cache that cannot fit is refused after its first image, with the numbers and a fix."""

from __future__ import annotations

import pytest
import torch

from histowsss.engine import memory
from histowsss.engine.memory import CacheTooLarge, check_cache_fits, free_bytes


def test_free_bytes_of_the_cpu_is_read():
    free = free_bytes(torch.device("cpu"))
    assert free is None or free > 0


def test_a_cache_that_cannot_fit_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: 10 * 2**30)
    cpu = torch.device("cpu")
    check_cache_fits("train_irn", 2**20, [1.0] * 1000, cpu, "lower train_irn.copies")  # 1 GiB: fits
    with pytest.raises(CacheTooLarge, match=r"train_irn: caching features of 100000 images needs about 97\.7 GiB "
                                            r".*only 10\.0 GiB is free on cpu; lower train_irn.copies"):
        check_cache_fits("train_irn", 2**20, [1.0] * 100_000, cpu, "lower train_irn.copies")
    # extrapolated by pixels: a large first image among small tiles is not taken for 100000 large images
    check_cache_fits("train_irn", 2**20, [16.0] + [1.0] * 99_999, cpu, "x")
    monkeypatch.setattr(memory, "free_bytes", lambda device: None)  # unknown: no refusal
    check_cache_fits("train_irn", 2**20, [1.0] * 100_000, cpu, "x")
