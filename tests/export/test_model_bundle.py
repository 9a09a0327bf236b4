"""`histowsss export`: a run's network as a small folder; `predict --run MODEL_DIR` gives the run folder's output."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from histowsss.cli.app import app

FAST = ["train_cam.epochs=2", "train_cam.crop_size=48", "train_cam.crops_per_image=4", "train_cam.cache_copies=2",
        "train_cam.head_channels=32", "make_cam.scales=[1.0]", "make_cam.flip=false",
        "train_cam.min_epochs_before_diagnosis=5", "train_seg.members=2",
        "train_seg.encoder=test_efficientnet", "train_seg.encoder_weights=none",
        "train_seg.decoder_channels=[16,16,8,8,8]", "train_seg.epochs=1", "train_seg.batch_size=4",
        "train_seg.crop_size=32", "train_seg.crops_per_image=2", "eval_seg.tile_size=32", "eval_seg.image_gate=true"]

runner = CliRunner()


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory, trained_run_builder) -> Path:
    """A run with a CAM classifier, a 2-member network and the image gate (eval_cam's chosen cut)."""
    return trained_run_builder(tmp_path_factory.mktemp("export"), {"train": 6, "val": 0, "test": 3}, FAST,
                               cam_stage=True)


def test_exported_model_predicts_as_the_run_folder(gated_run: Path, tmp_path: Path):
    model = tmp_path / "shared" / "model"
    res = runner.invoke(app, ["export", str(gated_run), "--out", str(model)])
    assert res.exit_code == 0, res.output
    held = sorted(str(f.relative_to(model)) for f in model.rglob("*") if f.is_file())
    # the config the shipped train_cam status names travels with it
    named = json.loads((model / "status" / "train_cam.json").read_text())["run_config"]
    assert named.startswith("config_history/") and named in held
    held.remove(named)
    assert held == ["MODEL.md", "checkpoints/cam.safetensors", "checkpoints/seg.json", "checkpoints/seg.safetensors",
                    "checkpoints/seg_m1.json", "checkpoints/seg_m1.safetensors", "config.yaml", "metrics/cam.json",
                    "model.json", "status/train_cam.json", "versions.json"]
    assert not list(model.parent.glob(".*partial*"))  # no temporary folder left behind
    umask = os.umask(0)
    os.umask(umask)
    assert model.stat().st_mode & 0o777 == 0o777 & ~umask  # made to be shared: not mkdtemp's private 0700
    card = json.loads((model / "model.json").read_text())
    assert card["network"] == "seg" and card["members"] == 2 and card["inference"]["image_gate"] is True
    assert card["trained_with"]["torch"] and "- Trained with histowsss" in (model / "MODEL.md").read_text()
    cam = json.loads((gated_run / "metrics" / "cam.json").read_text())
    assert card["inference"]["image_gate_cut"] == cam["chosen_gate"] and card["clicks"] is False
    assert f"less than {cam['chosen_gate']:g})" in (model / "MODEL.md").read_text()
    # the gate's classifier carries its backbone's weights: the card says so (a foundation model's licence)
    assert card["gate_classifier"]["backbone"] == "tf_efficientnet_lite0"
    assert "so their licence applies to this folder" in (model / "MODEL.md").read_text()
    # the network's encoder started from no file here; one from a file (a foundation model) is named with its state
    assert card["encoder_weights"] == {"source": "none"} and "Encoder weights" not in (model / "MODEL.md").read_text()
    from histowsss.export.model_bundle import card_markdown

    fm = card_markdown({**card, "encoder_weights": {"source": "file", "name": "uni.safetensors",
                                                    "sha256_16": "0123456789abcdef"}, "encoder_frozen": True})
    assert ("- Encoder weights: the file uni.safetensors (sha256 0123456789abcdef...), kept frozen; the network's "
            "checkpoints hold them, so their licence applies to this folder") in fm
    # the stain reference the images were mapped to is written out, the method's default too
    assert card["stain_normalization"] == "none" and card["stain_reference"] is None
    from histowsss.data.stain import MACENKO_REFERENCE, effective_reference

    ref = effective_reference("macenko", None)
    assert ref == [list(r) for r in MACENKO_REFERENCE]
    fm = card_markdown({**card, "stain_normalization": "macenko", "stain_reference": ref})
    assert f"stain normalisation: macenko to {ref}" in fm
    assert [c["name"] for c in card["classes"]] == ["benign", "malignant"]
    assert "test" in card["scores"] and 0 <= card["scores"]["test"]["miou"] <= 100
    for f, info in card["files"].items():  # sizes recorded for every copied file
        assert (model / f).stat().st_size == info["bytes"] and len(info["sha256"]) == 64
    assert "| test |" in (model / "MODEL.md").read_text()

    # the bundle works away from its run folder: moved, with the run folder out of reach
    moved = tmp_path / "elsewhere"
    shutil.move(str(model), moved)
    images = sorted((gated_run.parent / "data" / "images").glob("syn_test_*.png"))[:2]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for p in images:
        shutil.copy(p, inputs / p.name)
    outs = {}
    root = gated_run.parent
    hidden = root.with_name(root.name + "_out_of_reach")
    for name, source in (("run", gated_run), ("bundle", moved)):
        if name == "bundle":
            root.rename(hidden)  # nothing of the run folder, nor of its data, may be read now
        try:
            res = runner.invoke(app, ["predict", "--run", str(source), str(inputs), "--out", str(tmp_path / name)])
        finally:
            if hidden.exists():
                hidden.rename(root)
        assert res.exit_code == 0, res.output
        outs[name] = [np.asarray(Image.open(tmp_path / name / f"{p.stem}_labels.png")) for p in images]
    for a, b in zip(outs["run"], outs["bundle"]):
        np.testing.assert_array_equal(a, b)

    def region_ids(name: str) -> list[str]:
        return [f["id"] for p in images for f in json.loads((tmp_path / name / f"{p.stem}.geojson").read_text())[
            "features"]]

    assert region_ids("run") == region_ids("bundle")  # the same weights: the same region ids, wherever they live

    # the bundle holds the weak network only; asking it for the supervised one says so
    res = runner.invoke(app, ["predict", "--run", str(moved), "--supervised", str(images[0]), "--out",
                              str(tmp_path / "sup")])
    assert res.exit_code == 2 and "holds seg, not seg_supervised" in res.output


def test_export_refuses_to_overwrite_and_names_what_is_missing(gated_run: Path, tmp_path: Path):
    out = tmp_path / "model"
    out.mkdir()  # an empty folder made beforehand is written into without --overwrite
    assert runner.invoke(app, ["export", str(gated_run), "--out", str(out)]).exit_code == 0
    (out / "note.txt").write_text("kept until --overwrite")
    res = runner.invoke(app, ["export", str(gated_run), "--out", str(out)])
    assert res.exit_code == 2 and "already exists" in res.output and "--overwrite" in res.output
    assert (out / "note.txt").exists()
    res = runner.invoke(app, ["export", str(gated_run), "--out", str(out), "--overwrite"])
    assert res.exit_code == 0 and not (out / "note.txt").exists() and (out / "model.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary or old folder left
    # the new bundle cannot be moved in (e.g. the disk goes away): the earlier one stays where it was
    (out / "note.txt").write_text("earlier bundle")
    real_rename = Path.rename

    def failing_rename(self, target):
        if self.name.startswith(".model.") and not self.name.endswith(".old") and Path(target) == out:
            raise OSError("simulated failure")
        return real_rename(self, target)

    import unittest.mock

    with unittest.mock.patch.object(Path, "rename", failing_rename):
        res = runner.invoke(app, ["export", str(gated_run), "--out", str(out), "--overwrite"])
    assert res.exit_code != 0 and (out / "note.txt").read_text() == "earlier bundle"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (out / "note.txt").unlink()
    # a bundle copied in part: predict says to copy or export it again, not to train it
    part = tmp_path / "part"
    shutil.copytree(out, part)
    (part / "checkpoints" / "seg.safetensors").unlink()
    img = tmp_path / "img.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(img)
    res = runner.invoke(app, ["predict", "--run", str(part), str(img), "--out", str(tmp_path / "p")])
    text = " ".join(res.output.split())
    assert res.exit_code != 0 and "lacks its network's weights" in text and "histowsss export" in text, text
    for name in ("checkpoints/cam.safetensors", "metrics/cam.json", "config.yaml"):  # other parts: the same words
        shutil.rmtree(part)
        shutil.copytree(out, part)
        (part / name).unlink()
        res = runner.invoke(app, ["predict", "--run", str(part), str(img), "--out", str(tmp_path / "p")])
        text = " ".join(res.output.split())
        assert res.exit_code == 2 and "lacks" in text and name in text and "export it anew" in text, text
    # damaged weights (same size, other bytes) are refused by name; an edited config is predicted with, and said
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    w = bad / "checkpoints" / "seg.safetensors"
    data = bytearray(w.read_bytes())
    data[-3000:] = bytes(b ^ 0x5A for b in data[-3000:])
    w.write_bytes(bytes(data))
    res = runner.invoke(app, ["predict", "--run", str(bad), str(img), "--out", str(tmp_path / "pb")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "seg.safetensors differ(s) from what `histowsss export` wrote" in text, text
    shutil.rmtree(bad)
    shutil.copytree(out, bad)
    (bad / "config.yaml").write_text((bad / "config.yaml").read_text() + "\n")
    res = runner.invoke(app, ["predict", "--run", str(bad), str(img), "--out", str(tmp_path / "pc")])
    assert res.exit_code == 0 and "config.yaml changed since the export" in " ".join(res.output.split())
    res = runner.invoke(app, ["export", str(gated_run), "--out", str(tmp_path / "sup"), "--supervised"])
    assert res.exit_code == 2 and "seg_supervised.safetensors" in res.output and "train_seg.supervised=true" in res.output
    res = runner.invoke(app, ["export", str(gated_run), "--out", str(gated_run / "model")])
    assert res.exit_code == 2 and "outside the run folder" in res.output
    # --overwrite never deletes a folder that holds the run, nor one that is not an earlier export
    res = runner.invoke(app, ["export", str(gated_run), "--out", str(gated_run.parent), "--overwrite"])
    assert res.exit_code == 2 and "not one holding it" in res.output and (gated_run / "config.yaml").exists()
    other = tmp_path / "results"
    other.mkdir()
    (other / "table.csv").write_text("precious")
    res = runner.invoke(app, ["export", str(gated_run), "--out", str(other), "--overwrite"])
    assert res.exit_code == 2 and "not a model folder" in res.output and (other / "table.csv").exists()


def test_the_card_says_whether_clicks_corrected_the_training_labels():
    from histowsss.config import load_config
    from histowsss.export.model_bundle import _clicks_in_labels

    plain = load_config("glas-gland")
    clicked = load_config("glas-gland", ["points.file=c.csv"])
    irn_only = load_config("glas-gland", ["points.file=c.csv", "points.use_in=[ir_label,sem_seg]"])
    assert not _clicks_in_labels(plain, "pseudo") and not _clicks_in_labels(clicked, "ground_truth")
    assert _clicks_in_labels(clicked, "cam") and _clicks_in_labels(irn_only, "pseudo")
    assert not _clicks_in_labels(irn_only, "cam")  # CAM labels do not see IRN's clicks


def test_scores_of_an_earlier_network_are_left_out_of_the_card(gated_run: Path, tmp_path: Path):
    """eval_seg scored the network before train_seg was made again: the card must not show those scores as this
    network's."""
    run = tmp_path / "run"
    shutil.copytree(gated_run, run)
    (run / ".lock").unlink(missing_ok=True)
    fresh = json.loads((runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "m0")]) and
                        (tmp_path / "m0" / "model.json")).read_text())
    assert fresh["scores"] and "scores_left_out" not in fresh
    record = run / "status" / "eval_seg.json"
    st = json.loads(record.read_text())
    st["config_hash"] = "0" * 12  # as if it ran with the network of other settings
    record.write_text(json.dumps(st))
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "m1")])
    assert res.exit_code == 0, res.output
    assert "the model card leaves its scores out" in " ".join(res.output.split())
    card = json.loads((tmp_path / "m1" / "model.json").read_text())
    assert card["scores"] == {} and card["scores_left_out"].startswith("eval_seg")
    assert "Scores left out" in (tmp_path / "m1" / "MODEL.md").read_text()


def test_an_interrupted_export_leaves_no_copy_and_killed_ones_are_removed(gated_run: Path, tmp_path: Path,
                                                                          monkeypatch):
    import time

    from histowsss.export import model_bundle

    killed = tmp_path / ".m.abc123.partial"  # what an export killed hard (SIGKILL) left, an hour ago
    (killed / "checkpoints").mkdir(parents=True)
    hour_ago = time.time() - 3600
    os.utime(killed, (hour_ago, hour_ago))
    running = tmp_path / ".m.def456.partial"  # another export's copy, being written now: kept
    running.mkdir()
    real = model_bundle.model_card

    def stopped(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C (SIGTERM is raised as one) while the card is written

    monkeypatch.setattr(model_bundle, "model_card", stopped)
    res = runner.invoke(app, ["export", str(gated_run), "--out", str(tmp_path / "m")])
    assert res.exit_code == 130 and "nothing was exported" in " ".join(res.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.def456.partial"]  # its own copy and the killed one gone
    monkeypatch.setattr(model_bundle, "model_card", real)
    assert runner.invoke(app, ["export", str(gated_run), "--out", str(tmp_path / "m")]).exit_code == 0
    assert running.is_dir()


def test_report_of_an_exported_model_points_to_its_card(gated_run: Path, tmp_path: Path):
    model = tmp_path / "model"
    assert runner.invoke(app, ["export", str(gated_run), "--out", str(model)]).exit_code == 0
    res = runner.invoke(app, ["report", str(model)])
    assert res.exit_code != 0 and "an exported model" in " ".join(res.output.split())
    assert not (model / "report.html").exists()  # nothing written into the shared folder
    res = runner.invoke(app, ["tune", str(model), "-c", "train_seg.epochs=1"])
    assert res.exit_code != 0 and "an exported model" in " ".join(res.output.split())
    assert not (model / "tuning").exists()


def test_colors_with_the_image_gate(gated_run: Path, tmp_path: Path):
    """The gate's classifier is checked against config.yaml's colours (in its settings hash): --colors only draws."""
    imgs = sorted((gated_run.parent / "data" / "images").glob("*test*.png"))
    res = runner.invoke(app, ["predict", "--run", str(gated_run), *map(str, imgs), "--out", str(tmp_path / "o"),
                              "--colors", "malignant=#00ff00"])
    assert res.exit_code == 0, res.output
    feats = [f for img in imgs for f in json.loads((tmp_path / "o" / f"{img.stem}.geojson").read_text())["features"]]
    assert feats and all(f["properties"]["classification"]["color"] == [0, 255, 0] for f in feats)


def test_scores_of_this_network_stay_when_only_its_inputs_were_made_again(gated_run: Path, tmp_path: Path):
    """The labels train_seg read were made again (here: stopped mid-way) after it trained: the network is stale, but
    eval_seg's scores are still this network's, so the card keeps them."""
    from histowsss.config import load_config
    from histowsss.steps import train_seg

    run = tmp_path / "run"
    shutil.copytree(gated_run, run)
    (run / ".lock").unlink(missing_ok=True)
    cfg = load_config(str(run / "config.yaml"))
    read = train_seg.read_steps(cfg, json.loads((run / "status" / "train_seg.json").read_text()))
    record = run / "status" / f"{read[0]}.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "state": "failed"}))
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "m")])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "network seg is stale" in out and "leaves its scores out" not in out, res.output
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["scores"] and "scores_left_out" not in card
    # the image gate's cut does not stand (eval_cam stopped mid-way): the scores it gated are left out
    gate = run / "status" / "eval_cam.json"
    gate.write_text(json.dumps({**json.loads(gate.read_text()), "state": "failed"}))
    assert runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "m2")]).exit_code == 0
    assert "scores_left_out" in json.loads((tmp_path / "m2" / "model.json").read_text())


def test_an_export_refused_for_its_gate_names_the_run_folder(gated_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(gated_run, run)
    (run / ".lock").unlink(missing_ok=True)
    record = run / "status" / "train_cam.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "state": "failed"}))
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "m")])
    out = " ".join(res.output.split()).replace(" ", "")
    assert res.exit_code != 0 and "train_cam" in out and ".partial" not in out and str(run).replace(" ", "") in out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m")]
