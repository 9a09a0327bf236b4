"""Resume points: the weights and the optimiser state of one epoch, written as a pair and resumed only as a pair."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from histowsss.engine.checkpoints import (load_weights, resume_point, save_resume_point, save_weights,
                                          weights_stamp)


def _state(h: str, epoch: int) -> dict:
    return {"config_hash": h, "epoch": epoch, "history": "[]"}


def test_a_matching_pair_resumes(tmp_path: Path):
    last, state = tmp_path / "x_last.safetensors", tmp_path / "x_train_state.pt"
    model = nn.Linear(3, 2)
    save_resume_point(last, state, model, _state("abc", 4))
    assert weights_stamp(last) == {"format": "pt", "config_hash": "abc", "epoch": "4"}
    assert resume_point(last, state, "abc", overwrite=False)["epoch"] == 4
    other = nn.Linear(3, 2)
    load_weights(last, other)
    assert torch.equal(other.weight, model.weight)


def test_mismatched_or_stale_files_start_over(tmp_path: Path):
    last, state = tmp_path / "x_last.safetensors", tmp_path / "x_train_state.pt"
    model = nn.Linear(3, 2)
    assert resume_point(last, state, "abc", overwrite=False) is None  # nothing yet
    save_resume_point(last, state, model, _state("abc", 0))
    assert resume_point(last, state, "other", overwrite=False) is None  # another configuration
    # killed between the two writes of epoch 1: epoch-1 weights beside the epoch-0 state, and no epoch-0 weights
    save_weights(last, model, stamp={"config_hash": "abc", "epoch": "1"})
    assert resume_point(last, state, "abc", overwrite=False) is None
    # a run of another config (started with --overwrite) killed after its first weights: the state is still "abc"
    save_weights(last, model, stamp={"config_hash": "new", "epoch": "0"})
    assert resume_point(last, state, "abc", overwrite=False) is None
    save_weights(last, model)  # weights without a stamp (older versions)
    assert resume_point(last, state, "abc", overwrite=False) is None


def test_overwrite_discards_the_earlier_run(tmp_path: Path):
    last, state = tmp_path / "x_last.safetensors", tmp_path / "x_train_state.pt"
    save_resume_point(last, state, nn.Linear(3, 2), _state("abc", 2))
    assert resume_point(last, state, "abc", overwrite=True, is_main=False) is None
    assert last.exists() and state.exists()  # only rank 0 deletes
    assert resume_point(last, state, "abc", overwrite=True) is None
    assert not last.exists() and not state.exists()
    assert resume_point(last, state, "abc", overwrite=False) is None


def test_unreadable_files_name_themselves_and_the_fix(tmp_path: Path):
    import pytest

    from histowsss.engine.atomic import CorruptFileError

    last, state = tmp_path / "x_last.safetensors", tmp_path / "x_train_state.pt"
    save_resume_point(last, state, nn.Linear(3, 2), _state("abc", 2))
    last.write_bytes(last.read_bytes()[:20])  # truncated weights
    with pytest.raises(CorruptFileError, match="x_last.safetensors: unreadable checkpoint.*re-run"):
        load_weights(last, nn.Linear(3, 2))
    last.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="x_last.safetensors"):
        load_weights(last, nn.Linear(3, 2))
    state.write_bytes(state.read_bytes()[:30])  # a truncated resume state: warned about, training starts over
    with pytest.warns(UserWarning, match="x_train_state.pt: unreadable training state"):
        assert resume_point(last, state, "abc", overwrite=False) is None


def test_weights_without_a_frozen_part_load_only_the_rest(tmp_path: Path):
    """``skip_prefix`` leaves a frozen part out of the file; loading keeps the model's own tensors there, and a file
    that lacks anything else, or holds tensors the model has not, is refused."""
    import pytest

    net = nn.Sequential()
    net.add_module("backbone", nn.Linear(3, 3))
    net.add_module("head", nn.Linear(3, 2))
    path = tmp_path / "w.safetensors"
    save_weights(path, net, skip_prefix="backbone.")
    assert weights_stamp(path)["skipped"] == "backbone."
    other = nn.Sequential()
    other.add_module("backbone", nn.Linear(3, 3))
    other.add_module("head", nn.Linear(3, 2))
    kept = other.backbone.weight.clone()
    load_weights(path, other)
    assert torch.equal(other.head.weight, net.head.weight) and torch.equal(other.backbone.weight, kept)
    save_weights(path, net, skip_prefix="head.")  # the head left out: not a frozen part this model may keep
    bad = nn.Sequential()
    bad.add_module("backbone", nn.Linear(3, 3))
    bad.add_module("tail", nn.Linear(3, 2))
    with pytest.raises(RuntimeError, match="does not fit the model"):
        load_weights(path, bad)


def test_a_resume_point_of_another_weights_file_starts_over(tmp_path: Path, capsys):
    last, state = tmp_path / "x_last.safetensors", tmp_path / "x_train_state.pt"
    save_resume_point(last, state, nn.Linear(3, 2), {**_state("abc", 2), "weights_file": "aaaa"})
    assert resume_point(last, state, "abc", overwrite=False, weights_file="aaaa")["epoch"] == 2
    assert resume_point(last, state, "abc", overwrite=False, weights_file="bbbb") is None
    assert "trained on other weights" in capsys.readouterr().out
    assert resume_point(last, state, "abc", overwrite=False) is None  # now no file (package / random weights)
    save_resume_point(last, state, nn.Linear(3, 2), _state("abc", 3))  # saved without a file
    assert resume_point(last, state, "abc", overwrite=False)["epoch"] == 3


def test_a_kill_between_the_two_writes_resumes_from_the_epoch_before(tmp_path: Path, monkeypatch, capsys):
    """The epoch before's weights are kept aside until the new state is written: a kill between the weights and the
    state of epoch 3 resumes epoch 2's pair, not from scratch; a kill in the first write too."""
    from histowsss.engine import checkpoints
    from histowsss.engine.checkpoints import previous_weights_path

    last, state = tmp_path / "x_last.safetensors", tmp_path / "x_train_state.pt"
    models = [nn.Linear(3, 2) for _ in range(4)]
    for epoch in range(3):
        save_resume_point(last, state, models[epoch], _state("abc", epoch))
    assert not previous_weights_path(last).exists()  # removed once the pair is complete
    real = checkpoints.save_train_state
    monkeypatch.setattr(checkpoints, "save_train_state", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        save_resume_point(last, state, models[3], _state("abc", 3))
    except KeyboardInterrupt:
        pass
    got = resume_point(last, state, "abc", overwrite=False)
    assert got["epoch"] == 2 and got["weights_path"] == str(previous_weights_path(last))
    other = nn.Linear(3, 2)
    load_weights(Path(got["weights_path"]), other)
    assert torch.equal(other.weight, models[2].weight)
    # resumed from the kept pair, epoch 3 is trained again: a kill while its weights are written still finds the
    # epoch-2 pair (the epoch-3 weights the first kill left are not taken for the epoch before)
    monkeypatch.setattr(checkpoints, "save_train_state", real)
    real_weights = checkpoints.save_weights
    monkeypatch.setattr(checkpoints, "save_weights", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        save_resume_point(last, state, models[3], _state("abc", 3))
    except KeyboardInterrupt:
        pass
    assert resume_point(last, state, "abc", overwrite=False)["weights_path"] == str(previous_weights_path(last))
    # the next epoch's pair completes normally from there
    monkeypatch.setattr(checkpoints, "save_weights", real_weights)
    save_resume_point(last, state, models[3], _state("abc", 3))
    assert resume_point(last, state, "abc", overwrite=False)["weights_path"] == str(last)
    assert not previous_weights_path(last).exists()
    # weights of neither epoch: said, and started over
    save_weights(last, models[0], stamp={"config_hash": "abc", "epoch": "7"})
    assert resume_point(last, state, "abc", overwrite=False) is None
    assert "no weights of its epoch 4 beside it" in capsys.readouterr().out
