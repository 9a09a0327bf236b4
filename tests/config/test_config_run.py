"""The whole config (config/run.py): test splits held out before steps run, step hashes, file fingerprints."""

from __future__ import annotations

import re

import pytest

from histowsss.config import ConfigError, load_config


def test_test_splits_are_held_out_of_training_and_threshold_choice(tmp_path):
    """Checked before steps run (not on loading: a finished run folder made before the check still loads)."""
    from histowsss.config import split_leaks
    from histowsss.engine.pipeline import plan_steps
    from histowsss.engine.run_dir import RunDir

    for over, says in (("data.train_splits=[train, test]", "both in data.test_splits and in data.train_splits"),
                       ("eval_cam.choose_on=[val, test]", "eval_cam.choose_on names test split(s) test"),
                       ("ir_label.splits=[train, test]", "ir_label.splits names test split(s) test"),
                       ("train_seg.splits=[test]", "train_seg.splits names test split(s) test")):
        cfg = load_config("demo", [over])  # loads
        assert any(says in m for m in split_leaks(cfg)), over
        with pytest.raises(ConfigError, match=re.escape(says)):
            plan_steps(cfg, RunDir(tmp_path / "run", cfg))
    assert split_leaks(load_config("demo", ["eval_cam.choose_on=[val]"])) == []
    assert not (tmp_path / "run").exists()


def test_settings_that_change_no_output_change_no_hash():
    """Thread counts and unused keys: a finished step stays finished when they change."""
    from histowsss.steps import train_cam, train_seg

    base = load_config("demo")
    for over in ("seed=5",):  # (loader_threads / num_workers stay in the hash: finished runs that set them stay done)
        other = load_config("demo", [over])
        assert train_seg.config_hash(other) == train_seg.config_hash(base), over
        assert train_cam.config_hash(other) == train_cam.config_hash(base), over


def test_the_imagenet_weights_package_is_fingerprinted_like_a_file(tmp_path, monkeypatch):
    """'imagenet' reads a file too (the installed package's): an upgrade that changes it is seen as a changed file
    by the steps that record it, and by resume points."""
    from histowsss.config import load_config
    from histowsss.config.run import _file_fingerprint
    from histowsss.models import weights
    from histowsss.models.weights import packaged_weights_path

    cfg = load_config("demo", ["backbone.weights=imagenet", "train_seg.encoder_weights=imagenet"])
    packaged = _file_fingerprint(packaged_weights_path("tf_efficientnet_lite0"))
    assert packaged is not None
    assert cfg.backbone_digest() == cfg.weights_file_digest("train_seg.encoder_weights") == packaged
    upgraded = tmp_path / "lite0_v2.pth"
    upgraded.write_bytes(b"other weights")
    monkeypatch.setattr(weights, "packaged_weights_path", lambda name, key="backbone.weights": upgraded)
    assert cfg.backbone_digest() == _file_fingerprint(upgraded) != packaged
    assert load_config("demo", ["backbone.weights=none"]).backbone_digest() is None
