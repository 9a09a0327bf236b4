"""Fixtures of the step tests (a module may define its own ``dataset``, as test_irn_steps does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from histowsss.data.synthetic import generate_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (6 train, 2 val, 3 test images of 64 px), made once per test module."""
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), {"train": 6, "val": 2, "test": 3}, size=64)
