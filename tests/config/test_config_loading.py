"""Config loading (config/loading.py): builtin names, overrides parsed as YAML, unknown keys named by their path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from histowsss.config import (ConfigError, RunConfig, apply_overrides, builtin_config_path, load_config, parse_override,
                              validate_config)

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


def test_unknown_key_names_the_key_path():
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["train_cam.epoch=3"])
    msg = str(e.value)
    assert "train_cam.epoch" in msg and "unknown key" in msg and "did you mean 'train_cam.epochs'?" in msg
    with pytest.raises(ConfigError) as e:  # a section unknown as a whole, a key of an optional section, no match
        load_config("demo", ["trainseg.epochs=1", "data.patches={size: 112}", "data.patches.sise=3", "data.zzz=1"])
    msg = str(e.value)
    assert "unknown key 'trainseg' (from --set trainseg.epochs=1, not the file) (did you mean 'train_seg'?" in msg
    assert "did you mean 'data.patches.size'?" in msg and "unknown key 'data.zzz' (from --set data.zzz=1, not the " \
        "file) (check the spelling;" in msg


def test_unknown_key_in_yaml_file(tmp_path):
    raw = yaml.safe_load(builtin_config_path("demo").read_text())
    raw["data"]["clases"] = {"names": ["a", "b"]}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"data\.clases"):
        load_config(p)


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


def test_an_error_of_a_set_value_names_the_set_not_the_file():
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["train_seg.epoch=1", "train_cam.epochs=-2"])
    text = str(e.value)
    assert "unknown key 'train_seg.epoch' (from --set train_seg.epoch=1, not the file)" in text
    assert "'train_cam.epochs' (from --set train_cam.epochs=-2, not the file)" in text
    with pytest.raises(ConfigError) as e:
        validate_config({"train_cam": {"epochs": -2}}, origin="x.yaml")
    assert "from --set" not in str(e.value)
    with pytest.raises(ConfigError) as e:  # an error of the file's section, a --set of another key of it beside
        validate_config({"backbone": {"mean": [0.5, 0.5, 0.5], "channels_last": False}}, origin="x.yaml",
                        overrides={"backbone.channels_last": "backbone.channels_last=false"})
    assert "'backbone'" in str(e.value) and "from --set" not in str(e.value)


def test_class_colours_are_checked_when_the_config_loads():
    """Warned, not refused: a run folder made with such a config loads (the colours enter the steps' hashes, so
    fixing them in the config would make every step again; predict --colors draws with others)."""
    from histowsss.config import load_config

    with pytest.warns(UserWarning, match=r"colors must be '#rrggbb'.*benign: 'red'.*--colors"):
        load_config("demo", ["data.classes.colors.benign=red"])
    with pytest.warns(UserWarning, match=r"colors names 'nonexistent', not one of the classes"):
        load_config("demo", ["data.classes.colors.nonexistent=#00ff00"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config("demo", ["data.classes.colors.benign=#00FF00"]).data.classes.colors["benign"] == "#00FF00"
        cfg = load_config("demo", ["data.classes.colors.benign=00ff00"])  # (as older versions took it: '#' optional)
    assert cfg.data.classes.color("benign") == "#00ff00"  # what overlays, reports and GeoJSON draw with
    with pytest.warns(UserWarning):
        red = load_config("demo", ["data.classes.colors.malignant=red"]).data.classes
    assert red.color("malignant") == "#e6194b"  # no hex colour: the default of its position, not a crash
