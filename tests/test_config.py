"""Config loading: builtin names, overrides parsed as YAML, unknown keys named by their path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from histowsss.config import (ConfigError, DataConfig, RunConfig, apply_overrides, builtin_config_path, load_config,
                              parse_override, validate_config)

SHIPPED = ("demo", "glas-gland", "glas-malignant")


@pytest.mark.parametrize("name", SHIPPED)
def test_builtin_configs_load_and_validate(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # builtin names resolve from anywhere
    cfg = load_config(name)
    assert isinstance(cfg, RunConfig)
    assert cfg.name == name
    assert len(cfg.data.classes.names) >= 2
    # the resolved config survives a dump/validate round trip
    again = validate_config(cfg.model_dump(mode="json"))
    assert again == cfg


def test_glas_configs_protocols():
    gland = load_config("glas-gland")
    assert gland.data.label_column is None and gland.data.mask_mode == "binary"
    assert gland.data.patches is not None and gland.data.patches.size == 112 and gland.data.patches.min_fraction == 0.05
    mal = load_config("glas-malignant")
    assert mal.data.label_column == "grade" and mal.data.mask_mode == "binary_image_label"
    assert mal.data.classes.background == "benign"


def test_unknown_key_names_the_key_path():
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["train_cam.epoch=3"])
    msg = str(e.value)
    assert "train_cam.epoch" in msg and "unknown key" in msg


def test_unknown_key_in_yaml_file(tmp_path):
    raw = yaml.safe_load(builtin_config_path("demo").read_text())
    raw["data"]["clases"] = {"names": ["a", "b"]}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"data\.clases"):
        load_config(p)


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


def test_yaml_merge_keys_still_work(tmp_path):
    p = tmp_path / "merge.yaml"
    p.write_text(builtin_config_path("demo").read_text().replace("train_cam:\n", "train_cam:\n  <<: {seed: 3}\n", 1))
    assert load_config(p).train_cam.seed == 3


def test_a_key_written_twice_is_an_error(tmp_path):
    """Plain YAML keeps the last of two equal keys: a section written twice would drop the first without a word."""
    text = builtin_config_path("demo").read_text() + "\ntrain_cam:\n  lr: 0.002\n"
    p = tmp_path / "twice.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"twice\.yaml.*'train_cam' appears twice"):
        load_config(p)


def test_settings_that_change_no_output_change_no_hash():
    """Thread counts and unused keys: a finished step stays finished when they change."""
    from histowsss.steps import train_cam, train_seg

    base = load_config("demo")
    for over in ("seed=5",):  # (loader_threads / num_workers stay in the hash: finished runs that set them stay done)
        other = load_config("demo", [over])
        assert train_seg.config_hash(other) == train_seg.config_hash(base), over
        assert train_cam.config_hash(other) == train_cam.config_hash(base), over


def test_invalid_value_names_key():
    with pytest.raises(ConfigError, match=r"train_cam\.epochs"):
        load_config("demo", ["train_cam.epochs=0"])


@pytest.mark.parametrize("text, keys, value", [
    ("train_cam.epochs=3", ["train_cam", "epochs"], 3),
    ("train_cam.lr=0.5e-3", ["train_cam", "lr"], 5e-4),
    ("make_cam.flip=false", ["make_cam", "flip"], False),
    ("make_cam.scales=[1.0, 2]", ["make_cam", "scales"], [1.0, 2]),
    ("data.label_column=null", ["data", "label_column"], None),
    ("name=my run", ["name"], "my run"),
    ("data.classes.colors={a: '#ff0000'}", ["data", "classes", "colors"], {"a": "#ff0000"}),
])
def test_parse_override_yaml_values(text, keys, value):
    assert parse_override(text) == (keys, value)


def test_overrides_apply_to_loaded_config():
    cfg = load_config("glas-malignant", ["train_cam.epochs=2", "train_cam.lr=1e-4", "make_cam.scales=[1.0]",
                                         "data.image_scale=1",
                                         "data.manifest=/x/m.csv"])
    assert cfg.train_cam.epochs == 2
    assert cfg.train_cam.lr == pytest.approx(1e-4)  # YAML 1.1 reads '1e-4' as a string; pydantic coerces it
    assert cfg.make_cam.scales == [1.0]
    assert cfg.data.image_scale == 1.0
    assert cfg.data.manifest == Path("/x/m.csv")


@pytest.mark.parametrize("text, value", [
    ("name=2024", "2024"),                                     # a name that looks like a number
    ("name=yes", "yes"),                                       # ... or like a boolean
    ("data.classes.colors.benign=#ff0000", "#ff0000"),         # '#' starts a YAML comment
    ("data.label_separator=|", "|"),                           # '|' is a YAML block marker
    ("data.label_separator=,", ","),                           # not valid YAML at all
    ("train_seg.label_dir=runs/demo #2/labels", "runs/demo #2/labels"),
    ("train_seg.label_dir=runs/a: b/labels", "runs/a: b/labels"),
    ("train_seg.label_dir=001", "001"),
    ("train_seg.label_dir='quoted'", "quoted"),
    ("train_seg.label_dir=null", None),
    ("eval_seg.tta=none", "none"),
])
def test_text_fields_take_the_value_as_written(text, value):
    assert parse_override(text)[1] == value


@pytest.mark.parametrize("text, value", [
    ("data.test_splits=[01, 02]", ["01", "02"]),               # YAML reads 01 as the number 1
    ("data.train_splits=[yes, 2024]", ["yes", "2024"]),         # ... and yes as true
    ('data.val_splits=["fold a", b]', ["fold a", "b"]),
    ("data.val_splits=[]", []),
])
def test_lists_of_text_keep_their_items_as_written(text, value):
    assert parse_override(text)[1] == value
    assert getattr(load_config("demo", [text]).data, text.split("=")[0].split(".")[1]) == value


def test_a_value_that_is_not_valid_yaml_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"make_cam.scales=\[1.0,.*not valid YAML.*\[a, b\]"):
        parse_override("make_cam.scales=[1.0,")


def test_a_section_written_as_null_can_be_overridden():
    """A run folder's config.yaml writes empty sections as null: its keys can still be set."""
    raw = {"data": {"patches": None}}
    assert apply_overrides(raw, ["data.patches.size=112"]) == {"data": {"patches": {"size": 112}}}


def test_override_without_equals_is_clear():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("train_cam.epochs")


def test_override_into_a_scalar_is_refused():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_missing_config_names_builtins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config("nope.yaml")
    assert "nope.yaml" in str(e.value) and "glas-gland" in str(e.value)


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


def test_an_override_through_a_yaml_alias_changes_only_its_own_section(tmp_path):
    """Two sections sharing one mapping by a YAML anchor: --set on one of them must not reach the other."""
    path = tmp_path / "c.yaml"
    path.write_text("data: {manifest: m.csv, classes: {names: [a, b], background: a}}\n"
                    "train_cam: {augment: &aug {flips: true, hed_jitter: 0.03}}\n"
                    "train_seg: {augment: *aug}\n")
    cfg = load_config(str(path), ["train_cam.augment.flips=false"])
    assert cfg.train_cam.augment.flips is False and cfg.train_seg.augment.flips is True


def test_a_config_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml: not UTF-8 text"):
        load_config(str(path))


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


def test_the_imagenet_weights_package_is_fingerprinted_like_a_file(tmp_path, monkeypatch):
    """'imagenet' reads a file too (the installed package's): an upgrade that changes it is seen as a changed file
    by the steps that record it, and by resume points."""
    from histowsss.config import _file_fingerprint, load_config
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
