"""The sections' own rules (config/base.py, data.py, cam.py): protocols, data rules, numbers and booleans, RPNet
options."""

from __future__ import annotations

import pytest

from histowsss.config import ConfigError, DataConfig, load_config


def test_glas_configs_protocols():
    gland = load_config("glas-gland")
    assert gland.data.label_column is None and gland.data.mask_mode == "binary"
    assert gland.data.patches is not None and gland.data.patches.size == 112 and gland.data.patches.min_fraction == 0.05
    mal = load_config("glas-malignant")
    assert mal.data.label_column == "grade" and mal.data.mask_mode == "binary_image_label"
    assert mal.data.classes.background == "benign"


def test_data_config_rules():
    classes = {"names": ["bg", "fg"], "background": "bg"}
    with pytest.raises(ValueError, match="mask_foreground_class"):
        DataConfig(manifest="m.csv", classes=classes, mask_mode="binary")
    with pytest.raises(ValueError, match="background"):
        DataConfig(manifest="m.csv", classes={"names": ["a", "b"]}, mask_mode="binary_image_label")


def test_unknown_foreground_class_is_config_error():
    with pytest.raises(ConfigError, match="mask_foreground_class"):
        load_config("glas-gland", ["data.mask_foreground_class=glands"])


def test_numbers_as_names_and_booleans_as_numbers():
    """Split or class names written as numbers are text; a boolean given for a number is refused, not read as 1."""
    assert load_config("demo", ["data.train_splits=[1, 2]"]).data.train_splits == ["1", "2"]
    with pytest.raises(ConfigError, match="epochs: true is a boolean"):
        load_config("demo", ["train_cam.epochs=true"])
    assert load_config("demo", ["train_cam.epochs=3"]).train_cam.epochs == 3
    with pytest.raises(ConfigError, match="loader_threads: true is a boolean"):  # int | None too
        load_config("demo", ["train_seg.loader_threads=true"])
    assert load_config("demo", ["train_seg.loader_threads=null"]).train_seg.loader_threads is None
    # inside lists and tuples, and in unions with text (bg_offset: a number or "eval_cam"), too
    for bad in ("make_cam.scales=[true,0.5]", "eval_cam.thresholds=[yes]", "train_cam.augment.scale_range=[on,1.2]",
                "ir_label.sweep=[[true,0.05]]", "data.mask_ignore_values=[true]", "sem_seg.bg_offset=true"):
        with pytest.raises(ConfigError, match="boolean"):
            load_config("demo", [bad])
    assert load_config("demo", ["sem_seg.bg_offset=eval_cam", "make_cam.scales=[1, 0.5]"]).make_cam.scales == [1, 0.5]


def test_rpnet_options_are_checked_when_the_config_loads():
    """A misspelt RPNet option is an error naming it, not a key train_cam would ignore under network: cam."""
    from histowsss.config import load_config

    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'seed_treshold'; known: mid_level, seed_threshold"):
        load_config("demo", ["train_cam.rpnet.seed_treshold=0.4"])
    with pytest.raises(ConfigError, match="mid_level: 1.5 is not an integer"):
        load_config("demo", ["train_cam.rpnet.mid_level=1.5"])
    cfg = load_config("demo", ["train_cam.rpnet.sigma=2"])
    assert cfg.train_cam.rpnet == {"sigma": 2}
    assert load_config("demo", ["train_cam.rpnet={consistency_weight: 1e1}"]).train_cam.rpnet == {
        "consistency_weight": 10.0}  # YAML 1.1 reads 1e1 as text; RPNet always took it as the number
    assert load_config("demo").step_hash("train_cam") == load_config("demo", ["train_cam.rpnet={}"]).step_hash(
        "train_cam")
