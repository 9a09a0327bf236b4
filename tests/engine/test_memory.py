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
    check_cache_fits("train_irn", 2**20, 1000, 2**20, torch.device("cpu"), "lower train_irn.copies")  # 1 GiB: fits
    with pytest.raises(CacheTooLarge, match=r"train_irn: caching features of 100000 images needs about 97\.7 GiB "
                                            r".*only 10\.0 GiB is free on cpu; lower train_irn.copies"):
        check_cache_fits("train_irn", 2**20, 100_000, 2**20, torch.device("cpu"), "lower train_irn.copies")
    monkeypatch.setattr(memory, "free_bytes", lambda device: None)  # unknown: no refusal
    check_cache_fits("train_irn", 2**20, 100_000, 2**20, torch.device("cpu"), "x")
