"""eval_seg.image_gate: the CAM classifier's image-level decision removes classes before the argmax, in eval_seg
(from make_cam's stored probabilities) and in predict (the CAM network run again) alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from histowsss.cli.app import app
from histowsss.config import load_config
from histowsss.data.masks import load_class_mask
from histowsss.data.synthetic import generate_synthetic_dataset
from histowsss.engine.atomic import write_png
from histowsss.engine.pipeline import run_pipeline
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.steps import eval_seg, make_sem_seg_labels
from histowsss.steps.common import samples_for
from histowsss.steps.image_gate import absent_classes, apply_gate

FAST = ["train_cam.epochs=2", "train_cam.crop_size=48", "train_cam.crops_per_image=4", "train_cam.cache_copies=2",
        "train_cam.head_channels=32", "make_cam.scales=[1.0]", "make_cam.flip=false",
        "train_cam.min_epochs_before_diagnosis=5",
        "train_seg.encoder=test_efficientnet", "train_seg.encoder_weights=none",
        "train_seg.decoder_channels=[16,16,8,8,8]", "train_seg.epochs=2", "train_seg.batch_size=4",
        "train_seg.crop_size=32", "train_seg.crops_per_image=2", "eval_seg.tile_size=32"]


def test_apply_gate_removes_absent_classes_but_never_background():
    p = np.stack([np.full((4, 4), 0.3), np.full((4, 4), 0.7)]).astype(np.float32)
    assert absent_classes(np.array([0.2]), ["malignant"], ["benign", "malignant"], 0.5) == [1]
    assert absent_classes(np.array([0.8]), ["malignant"], ["benign", "malignant"], 0.5) == []
    g = apply_gate(p, [1], background=0)
    assert (g.argmax(0) == 0).all() and np.allclose(g.sum(0), 1) and np.allclose(p[1], 0.7)  # input unchanged
    assert np.array_equal(apply_gate(p, [0], background=0), p)  # background is never removed
    # no background class (tissue types): one class removed renormalises the rest; all removed leaves the network's
    assert (apply_gate(p, [1], background=None).argmax(0) == 0).all()
    assert np.array_equal(apply_gate(p, [0, 1], background=None), p)


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory, trained_run_builder) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("gate")
    run_path = trained_run_builder(root, {"train": 8, "val": 2, "test": 4}, FAST, cam_stage=True)
    manifest = root / "data" / "manifest.csv"
    cfg = load_config("demo", [f"data.manifest={manifest}", *FAST])
    run = RunDir(run_path, cfg)
    # a cut between the test images' malignant probabilities, so that some are gated and some not
    test = samples_for(cfg, ["test"])
    probs = {s.name: float(np.load(run.path / "cams" / f"{s.name}.npz")["probs"][0]) for s in test}
    cut = float(np.median(list(probs.values())))
    cam_json = run.path / "metrics" / "cam.json"
    m = json.loads(cam_json.read_text())
    m["chosen_gate"] = cut
    cam_json.write_text(json.dumps(m))
    gcfg = load_config("demo", [f"data.manifest={manifest}", *FAST, "eval_seg.image_gate=true"])
    (run.path / "config.yaml").write_text((run.path / "config.yaml").read_text().replace(
        "image_gate: false", "image_gate: true"))
    assert eval_seg.config_hash(gcfg) != eval_seg.config_hash(cfg)
    ungated = {s.name: np.asarray(Image.open(run.path / "pred" / f"{s.name}.png")) for s in test}
    run_pipeline(gcfg, RunDir(run.path, gcfg), start="eval_seg", stop="eval_seg", log=lambda m: None)
    return run.path, [(s, probs[s.name] < cut, ungated[s.name]) for s in test]


def test_eval_seg_gate_follows_the_stored_classifier_probabilities(gated_run):
    run_path, items = gated_run
    assert any(g for _, g, _ in items) and not all(g for _, g, _ in items)
    for s, gated, before in items:
        pred = np.asarray(Image.open(run_path / "pred" / f"{s.name}.png"))
        if gated:
            assert (before == 1).any() and (pred == 0).all()  # the classifier says benign: nothing malignant
        else:
            assert np.array_equal(pred, before)         # untouched where the classifier says malignant
    m = json.loads((run_path / "metrics" / "seg.json").read_text())
    assert m["inference"]["image_gate"] is True
    assert m["inference"]["images_with_classes_removed"] == sum(g for _, g, _ in items)


def test_predict_gates_new_images_like_eval_seg(gated_run, tmp_path):
    run_path, items = gated_run
    out = tmp_path / "out"
    files = [str(s.image) for s, _, _ in items]
    res = CliRunner().invoke(app, ["predict", "--run", str(run_path), *files, "--out", str(out)])
    assert res.exit_code == 0, res.output
    for s, _, _ in items:  # the CAM network run again on the image gives make_cam's decision
        lab = np.asarray(Image.open(out / f"{Path(s.image).stem}_labels.png"))
        assert np.array_equal(lab, np.asarray(Image.open(run_path / "pred" / f"{s.name}.png")))


def test_configured_cut_overrides_eval_cams(gated_run):
    from histowsss.steps.image_gate import chosen_gate

    run_path, _ = gated_run
    cfg = load_config(str(run_path / "config.yaml"), ["eval_seg.image_gate_cut=0.2"])
    assert chosen_gate(run_path, cfg) == 0.2
    assert chosen_gate(run_path, load_config(str(run_path / "config.yaml"))) == json.loads(
        (run_path / "metrics" / "cam.json").read_text())["chosen_gate"]


def test_gate_without_the_cam_stage_is_a_clear_error(tmp_path):
    manifest = generate_synthetic_dataset(tmp_path / "data", {"train": 4, "val": 1, "test": 2}, size=64)
    cfg = load_config("demo", [f"data.manifest={manifest}", *FAST, "eval_seg.image_gate=true"])
    run = RunDir(tmp_path / "run", cfg).init()
    with run.step("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg)):
        for s in samples_for(cfg, ["train", "val"]):
            write_png(run.path / "pseudo" / f"{s.name}.png", load_class_mask(s, cfg.data))
    run_pipeline(cfg, run, start="train_seg", stop="train_seg", log=lambda m: None)
    with pytest.raises(StepError, match="eval_cam"):
        eval_seg.run(cfg, run)


def test_predict_cpu_amp_flags_override_the_run_settings(gated_run, tmp_path: Path, monkeypatch):
    """predict's bfloat16 inference, for the segmentation network and the image gate's classifier alike: the run's
    eval_seg.cpu_amp / make_cam.cpu_amp without a flag, --cpu-amp / --no-cpu-amp over them; config.yaml unchanged."""
    import shutil

    import yaml

    import histowsss.engine.device as device
    import histowsss.engine.inference as inference

    seen: dict[str, list[bool]] = {}

    def spy_on(module):
        real = module.bf16_enabled

        def spy(device, cuda, cpu, option, warn=True):
            seen.setdefault(option, []).append(cpu)
            return real(device, cuda, cpu, option, warn)

        monkeypatch.setattr(module, "bf16_enabled", spy)

    spy_on(inference)
    spy_on(device)  # (make_cam imports it as it runs)
    run_off, items = gated_run
    run_on = tmp_path / "run_on"  # the same run, its config.yaml with both options on
    shutil.copytree(run_off, run_on)
    doc = yaml.safe_load((run_on / "config.yaml").read_text())
    doc["eval_seg"]["cpu_amp"] = doc["make_cam"]["cpu_amp"] = True
    (run_on / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    image = items[0][0].image
    for run, flag, expected in ((run_on, None, True), (run_on, "--no-cpu-amp", False), (run_off, None, False),
                                (run_off, "--cpu-amp", True)):
        seen.clear()
        before = (run / "config.yaml").read_text()
        out = tmp_path / f"out_{run.name}_{flag}"
        res = CliRunner().invoke(app, ["predict", "--run", str(run), str(image), "--out", str(out)]
                                 + ([flag] if flag else []))
        assert res.exit_code == 0, res.output
        assert set(seen) == {"eval_seg.cpu_amp", "make_cam.cpu_amp"}, (run.name, flag, seen)
        assert all(v is expected for vals in seen.values() for v in vals), (run.name, flag, seen)
        assert (run / "config.yaml").read_text() == before


def test_cpu_amp_flag_is_ignored_off_the_cpu(gated_run):
    """On a GPU the CPU bfloat16 options do nothing; the flag leaves them (and so a slide's cache key) unchanged."""
    import torch

    from histowsss.cli.predict_cmd import apply_cpu_amp
    from histowsss.config import load_config

    cfg = load_config(gated_run[0] / "config.yaml")
    cfg.eval_seg.cpu_amp = cfg.make_cam.cpu_amp = False
    lines: list[str] = []
    apply_cpu_amp(cfg, True, torch.device("cuda"), lines.append)
    assert (cfg.eval_seg.cpu_amp, cfg.make_cam.cpu_amp) == (False, False)
    assert lines and "ignored on cuda" in lines[0]
    apply_cpu_amp(cfg, True, torch.device("cpu"), lines.append)
    assert (cfg.eval_seg.cpu_amp, cfg.make_cam.cpu_amp) == (True, True)
    apply_cpu_amp(cfg, None, torch.device("cpu"), lines.append)
    assert (cfg.eval_seg.cpu_amp, cfg.make_cam.cpu_amp) == (True, True)


def test_stored_probabilities_of_another_make_cam_are_refused(tmp_path: Path):
    from histowsss.engine.atomic import write_npz
    from histowsss.steps.image_gate import stored_absent

    write_npz(tmp_path / "cams" / "a.npz", probs=np.array([0.2], np.float32), classes=np.array(["malignant"]),
              config_hash=np.array("aaaa"))
    names = ["benign", "malignant"]
    assert stored_absent(tmp_path, "a", names, 0.5, "aaaa") == [1]
    assert stored_absent(tmp_path, "a", names, 0.5) == [1]  # no hash asked for (a fold's own CAM stage)
    with pytest.raises(StepError, match="a.npz: CAM from another configuration"):
        stored_absent(tmp_path, "a", names, 0.5, "bbbb")
