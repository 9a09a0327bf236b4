"""Fixtures of the step tests (a module may define its own ``dataset``, as test_irn_steps does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from histowsss.data.synthetic import generate_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (6 train, 2 val, 3 test images of 64 px), made once per test module."""
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), {"train": 6, "val": 2, "test": 3}, size=64)


@pytest.fixture
def kill_after_epoch(monkeypatch):
    """``kill(epochs, step_run, *args)``: run a training step until it has saved ``epochs`` resume points, then stop it
    there (a KeyboardInterrupt, as a kill after that epoch would); the saving function is restored afterwards."""
    from histowsss.engine import checkpoints

    def kill(epochs, step_run, *args, **kwargs) -> None:
        real = checkpoints.save_train_state
        saved = {"n": 0}

        def save_then_die(path, state):
            real(path, state)
            saved["n"] += 1
            if saved["n"] == epochs:
                raise KeyboardInterrupt(f"killed after epoch {epochs - 1}")

        monkeypatch.setattr(checkpoints, "save_train_state", save_then_die)
        try:
            with pytest.raises(KeyboardInterrupt):
                step_run(*args, **kwargs)
        finally:
            monkeypatch.setattr(checkpoints, "save_train_state", real)

    return kill
