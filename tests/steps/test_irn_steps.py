"""IRN steps (cam_to_ir_label ... eval_sem_seg) on a tiny synthetic run with fake CAMs (no CAM training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from histowsss.config import load_config
from histowsss.data.masks import load_class_mask
from histowsss.data.synthetic import generate_synthetic_dataset
from histowsss.engine.atomic import write_npz
from histowsss.engine.pipeline import run_pipeline
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.steps import (cam_to_ir_label, eval_cam, make_cam, make_sem_seg_labels, train_irn)
from histowsss.steps.common import all_splits, output_classes, samples_for
from histowsss.steps.registry import PIPELINE

IRN_STEPS = ["cam_to_ir_label", "train_irn", "make_sem_seg_labels", "make_ins_seg_labels", "eval_sem_seg"]
FAST = ["backbone.weights=none", "train_irn.epochs=2", "train_irn.batch_size=4", "train_irn.crop_size=64",
        "train_irn.crops_per_image=2", "train_irn.radius=5", "train_irn.edge_channels=8",
        "train_irn.dp_channels=16", "sem_seg.exp_times=4", "ins_seg.refine_iterations=20", "ins_seg.min_area=4"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), {"train": 4, "val": 0, "test": 2}, size=64)


def make_cfg(manifest: Path, *extra: str):
    return load_config("demo", [f"data.manifest={manifest}", *FAST, *extra])


def fake_cams(cfg, run: RunDir, zero: tuple[str, ...] = ()) -> None:
    """CAMs made from the ground truth (blurred, stride 4) + a finished make_cam status record."""
    rng = np.random.default_rng(0)
    classes = output_classes(cfg)
    with run.step("make_cam", make_cam.config_hash(cfg)):
        for s in samples_for(cfg, all_splits(cfg)):
            gt = load_class_mask(s, cfg.data)
            h, w = gt.shape
            grid = (-(-h // 4), -(-w // 4))
            cams = []
            for c in classes:
                m = np.zeros((grid[0] * 4, grid[1] * 4), np.float32)
                m[:h, :w] = gt == cfg.data.classes.index(c)
                m = m.reshape(grid[0], 4, grid[1], 4).mean(axis=(1, 3))
                m = ndimage.gaussian_filter(m, 1.0) * 5 + rng.random(grid).astype(np.float32) * 0.2
                cams.append(m if s.name not in zero else np.zeros(grid, np.float32))
            cam = np.stack(cams).astype(np.float16)
            probs = np.array([0.9 if (gt == cfg.data.classes.index(c)).any() else 0.1 for c in classes], np.float32)
            write_npz(make_cam.cam_path(run, s.name), cam=cam, probs=probs, classes=np.array(classes),
                      size=np.array((h, w)), config_hash=np.array(make_cam.config_hash(cfg)))


def prepared_run(path: Path, cfg, zero: tuple[str, ...] = ()) -> RunDir:
    run = RunDir(path, cfg).init()
    fake_cams(cfg, run, zero)
    eval_cam.run(cfg, run)
    return run


def test_steps_are_registered_in_order():
    i = PIPELINE.index("eval_cam")
    assert PIPELINE[i + 1 : i + 6] == IRN_STEPS


def test_pipeline_end_to_end(dataset: Path, tmp_path: Path):
    cfg = make_cfg(dataset)
    run = prepared_run(tmp_path / "run", cfg)
    res = run_pipeline(cfg, run, start="cam_to_ir_label", stop="eval_sem_seg", log=lambda m: None)
    assert list(res) == IRN_STEPS
    names = [s.name for s in samples_for(cfg, ["train"])]
    for n in names:
        ir = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(run.path / "ir_labels" / f"{n}.png"))
        assert ir.shape == (16, 16) and ir.dtype == np.uint8
        assert set(np.unique(ir)) <= {0, 1, 255}
        assert (run.path / "pseudo" / f"{n}.png").exists()
        assert (run.path / "instances" / f"{n}.png").exists()
        assert (run.path / "irn" / f"{n}.npz").exists()
    assert (run.path / "checkpoints" / "irn.safetensors").exists()
    log = [json.loads(line) for line in (run.path / "logs" / "train_irn.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(np.isfinite(r["total"]) for r in log)
    ir_metrics = json.loads((run.path / "metrics" / "ir_label.json").read_text())
    assert ir_metrics["sweep"] and ir_metrics["chosen"]["conf_fg"] > 0
    sem = json.loads((run.path / "metrics" / "sem_seg.json").read_text())
    train = sem["splits"]["train"]
    assert train["irn_pseudo"]["miou"] is not None and train["cam"]["miou"] is not None
    assert {"confident_only", "ignore_as_background", "coverage"} <= set(train["ir_labels"])
    assert "irn_instances" in train["objects"]
    from PIL import Image
    inst = np.asarray(Image.open(run.path / "instances" / f"{names[1]}.png"))
    assert inst.dtype == np.uint16
    # a second pipeline call skips every finished step
    assert run_pipeline(cfg, run, start="cam_to_ir_label", stop="eval_sem_seg", log=lambda m: None) == {}


def test_irn_steps_on_a_vision_transformer_backbone(dataset: Path, tmp_path: Path):
    """A ViT (16-px token grid, no stride-4 level of its own) trains and walks: pseudo-masks on the stride-4 grid."""
    cfg = make_cfg(dataset, "backbone.name=vit_tiny_patch16_224", "backbone.model_kwargs={depth: 2}")
    run = prepared_run(tmp_path / "run", cfg)
    run_pipeline(cfg, run, start="cam_to_ir_label", stop="eval_sem_seg", log=lambda m: None)
    sem = json.loads((run.path / "metrics" / "sem_seg.json").read_text())["splits"]["train"]
    assert sem["irn_pseudo"]["miou"] is not None
    with np.load(run.path / "irn" / f"{samples_for(cfg, ['train'])[0].name}.npz") as z:
        assert z["boundary"].shape == (16, 16)


def test_inference_rebuilds_the_backbone_the_heads_were_trained_on(dataset: Path):
    """backbone.weights: none: the frozen random backbone is not saved, so it must come out the same at inference."""
    import torch

    from histowsss.steps.irn_common import build_irn, build_irn_as_trained

    cfg = make_cfg(dataset)
    torch.manual_seed(cfg.train_irn.seed)  # as train_irn builds it
    trained = build_irn(cfg).state_dict()
    state = torch.random.get_rng_state()
    rebuilt = build_irn_as_trained(cfg).state_dict()
    assert all(torch.equal(trained[k], rebuilt[k]) for k in trained)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched


def test_missing_cams_is_a_clear_error(dataset: Path, tmp_path: Path):
    cfg = make_cfg(dataset)
    run = RunDir(tmp_path / "run", cfg).init()
    with pytest.raises(StepError, match="make_cam"):
        cam_to_ir_label.run(cfg, run)
    fake_cams(cfg, run)
    victim = samples_for(cfg, ["train"])[0].name
    make_cam.cam_path(run, victim).unlink()
    with pytest.raises(StepError, match=f"missing.*{victim}"):
        cam_to_ir_label.run(cfg, run, overwrite=True)


def test_cams_from_another_config_are_refused(dataset: Path, tmp_path: Path):
    cfg = make_cfg(dataset)
    run = prepared_run(tmp_path / "run", cfg)
    other = make_cfg(dataset, "make_cam.scales=[1.0]")
    with pytest.raises(StepError, match="another configuration"):
        cam_to_ir_label.run(other, RunDir(run.path, other))
    # downstream: train_irn refuses ir labels made with another ir_label config
    cam_to_ir_label.run(cfg, run)
    changed = make_cfg(dataset, "ir_label.conf_fg=0.5")
    with pytest.raises(StepError, match="another configuration"):
        train_irn.run(changed, RunDir(run.path, changed))


def test_image_without_confident_foreground_is_counted(dataset: Path, tmp_path: Path):
    cfg = make_cfg(dataset, "ir_label.select=fixed")
    malignant = [s.name for s in samples_for(cfg, ["train"]) if "malignant" in s.labels]
    run = prepared_run(tmp_path / "run", cfg, zero=(malignant[0],))
    info = cam_to_ir_label.run(cfg, run)
    assert info["no_confident_foreground"]["count"] == 1
    assert malignant[0] in info["no_confident_foreground"]["images"]
    train_irn.run(cfg, run)
    make_sem_seg_labels.run(cfg, run)
    st = run.status("make_sem_seg_labels")
    assert st["no_confident_foreground"] == 1 and st["no_foreground_label"] == 2
    from PIL import Image
    assert not np.asarray(Image.open(run.path / "pseudo" / f"{malignant[0]}.png")).any()


def test_restart_resumes_without_redoing_images(dataset: Path, tmp_path: Path, monkeypatch):
    cfg = make_cfg(dataset)
    run = prepared_run(tmp_path / "run", cfg)
    cam_to_ir_label.run(cfg, run)
    train_irn.run(cfg, run)
    calls: list[str] = []
    real = make_sem_seg_labels._process_image

    def crashing(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(args[5].name)
        return real(*args, **kw)

    monkeypatch.setattr(make_sem_seg_labels, "_process_image", crashing)
    with pytest.raises(KeyboardInterrupt):
        make_sem_seg_labels.run(cfg, run)
    assert run.status("make_sem_seg_labels")["state"] == "failed"
    done = {p.stem: p.stat().st_mtime_ns for p in (run.path / "pseudo").glob("*.png")}
    assert sorted(done) == sorted(calls)
    monkeypatch.setattr(make_sem_seg_labels, "_process_image", real)
    out = make_sem_seg_labels.run(cfg, run)
    assert out["reused"] == 2 and out["computed"] == 2
    assert all((run.path / "pseudo" / f"{n}.png").stat().st_mtime_ns == t for n, t in done.items())
    assert run.status("make_sem_seg_labels")["state"] == "done"


def test_train_irn_resumes_from_last_epoch(dataset: Path, tmp_path: Path, kill_after_epoch):
    cfg = make_cfg(dataset, "train_irn.epochs=2")
    run = prepared_run(tmp_path / "run", cfg)
    cam_to_ir_label.run(cfg, run)
    kill_after_epoch(1, train_irn.run, cfg, run)
    meta = train_irn.run(cfg, run)
    assert run.status("train_irn")["resumed_from_epoch"] == 1
    log = (run.path / "logs" / "train_irn.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [0, 1] and meta["final"]["epoch"] == 1


def test_background_channel_mode_uses_eval_cams_offset(dataset: Path, tmp_path: Path):
    """With a background CAM channel (as glas-gland) labels use that channel and the walk uses eval_cam's offset."""
    cfg = make_cfg(dataset, "train_cam.background_mode=class", "train_irn.epochs=1")
    assert eval_cam.cam_mode(cfg) == "offset"
    run = prepared_run(tmp_path / "run", cfg)
    info = cam_to_ir_label.run(cfg, run)
    assert info["mode"] == "offset" and info["chosen"]["margin"] == cfg.ir_label.margin
    train_irn.run(cfg, run)
    make_sem_seg_labels.run(cfg, run)
    chosen = json.loads((run.path / "metrics" / "cam.json").read_text())["chosen_value"]
    assert run.status("make_sem_seg_labels")["background_value"] == chosen
    # a fixed offset does not depend on eval_cam (another hash), and eval_cam's is refused when eval_cam is stale
    fixed = make_cfg(dataset, "train_cam.background_mode=class", "train_irn.epochs=1", "sem_seg.bg_offset=0.1")
    assert make_sem_seg_labels.config_hash(fixed) != make_sem_seg_labels.config_hash(cfg)
    stale = make_cfg(dataset, "train_cam.background_mode=class", "train_irn.epochs=1", "eval_cam.offsets=[0.0]")
    with pytest.raises(StepError, match="eval_cam"):
        make_sem_seg_labels.background_value(stale, RunDir(run.path, stale))


def test_patch_label_gating_constrains_every_label_map(dataset: Path, tmp_path: Path):
    """eval_cam.label_gating=patch: IR seeds and pseudo-masks take only classes their patch labels allow."""
    from PIL import Image

    from histowsss.data.label_gate import cell_centres, patch_allowed

    gating = ["data.patches={size: 16, stride: 8, label_rule: mask_fraction}", "train_irn.epochs=1"]
    cfg = make_cfg(dataset, *gating, "eval_cam.label_gating=patch")
    plain = make_cfg(dataset, *gating)
    for step in (cam_to_ir_label, train_irn, make_sem_seg_labels):
        assert step.config_hash(cfg) != step.config_hash(plain)
    zero = samples_for(cfg, ["train"])[1].name  # an all-zero CAM: no foreground evidence, still gated
    run = prepared_run(tmp_path / "run", cfg, zero=(zero,))
    m = json.loads((run.path / "metrics" / "cam.json").read_text())
    assert m["label_gating"] == "patch"
    cam_to_ir_label.run(cfg, run)
    train_irn.run(cfg, run)
    make_sem_seg_labels.run(cfg, run)
    refused = 0
    for s in samples_for(cfg, ["train"]):
        allowed = patch_allowed(load_class_mask(s, cfg.data), cfg.data)
        pseudo = np.asarray(Image.open(run.path / "pseudo" / f"{s.name}.png"))
        ir = np.asarray(Image.open(run.path / "ir_labels" / f"{s.name}.png"))
        g = cell_centres(allowed, ir.shape, 4)
        for lab, gate in ((pseudo, allowed), (ir, g)):
            valid = lab != 255
            assert np.take_along_axis(gate, np.where(valid, lab, 0)[None].astype(np.int64), 0)[0][valid].all()
            single = gate.sum(0) == 1
            assert (lab[single] == gate[:, single].argmax(0)).all()
        if s.labels == ("malignant",):
            refused += int((~allowed[1]).sum())
    assert refused > 0  # the gate did refuse the malignant class somewhere in malignant images


def test_clicks_fix_ir_seeds_and_pseudo_masks(dataset: Path, tmp_path: Path):
    """points: a click's disk takes its class in the IR seeds and in the pseudo-mask, even against the CAM."""
    from PIL import Image

    base = make_cfg(dataset, "train_irn.epochs=1")
    s_mal = next(s for s in samples_for(base, ["train"]) if s.labels == ("malignant",))
    gt = load_class_mask(s_mal, base.data)
    ys, xs = np.nonzero(gt == 0)  # a click calling background "malignant", and one calling a gland "benign"
    yb, xb = ys[len(ys) // 2], xs[len(xs) // 2]
    ys, xs = np.nonzero(gt == 1)
    yg, xg = ys[len(ys) // 2], xs[len(xs) // 2]
    clicks = tmp_path / "clicks.csv"
    clicks.write_text(f"image,x,y,class\n{s_mal.name},{xb + 0.5},{yb + 0.5},malignant\n"
                      f"{s_mal.name},{xg + 0.5},{yg + 0.5},benign\n")
    cfg = make_cfg(dataset, "train_irn.epochs=1", f"points.file={clicks}", "points.radius=4")
    run = prepared_run(tmp_path / "run", cfg)
    cam_to_ir_label.run(cfg, run)
    train_irn.run(cfg, run)
    make_sem_seg_labels.run(cfg, run)
    ir = np.asarray(Image.open(run.path / "ir_labels" / f"{s_mal.name}.png"))
    pseudo = np.asarray(Image.open(run.path / "pseudo" / f"{s_mal.name}.png"))
    assert ir[yb // 4, xb // 4] == 1 and ir[yg // 4, xg // 4] == 0
    assert (pseudo[yb - 2 : yb + 3, xb - 2 : xb + 3] == 1).all() and (pseudo[yg - 2 : yg + 3, xg - 2 : xg + 3] == 0).all()
    assert gt[yb, xb] == 0 and gt[yg, xg] == 1  # both clicks contradict the (ground-truth-made) CAMs


def test_seed_cams_puts_clicks_into_the_walk():
    cam = np.full((2, 4, 4), 0.3, np.float32)
    clicks = np.full((4, 4), 255, np.uint8)
    clicks[0, 0], clicks[3, 3] = 2, 0  # class ids: channel 0 = class 1, channel 1 = class 2; 0 = background
    out, present = make_sem_seg_labels.seed_cams(cam, np.array([True, False]), [1, 2], clicks)
    assert out[1, 0, 0] == 1 and out[0, 0, 0] == 0 and (out[:, 3, 3] == 0).all() and out[0, 1, 1] == 0.3
    assert present.tolist() == [True, True] and cam[1, 0, 0] == 0.3  # input untouched


def test_images_smaller_than_the_crop_are_mirrored_not_zero_padded(dataset: Path):
    """A 64 px image with 96 px crops: its cached features cover the crop with mirrored image content (the heads'
    GroupNorm never sees zeros at inference), and the mirrored part's labels are ignored."""
    import torch

    from histowsss.data.transforms import Normalizer
    from histowsss.models.irnet import IGNORE
    from histowsss.steps.irn_common import build_irn

    cfg = make_cfg(dataset, "train_irn.crop_size=96", "train_irn.copies=1")
    model = build_irn(cfg)
    sample = samples_for(cfg, ["train"])[0]
    lab = np.zeros((16, 16), np.uint8)
    lab[4:8, 4:8] = 1
    cache = train_irn.FeatureCache(model, [sample], [lab], cfg.data, 1,
                                   Normalizer(model.backbone.mean, model.backbone.std), torch.device("cpu"),
                                   min_side=96)
    feats, lw = cache.crop(0, 0, 24, model.max_reduction // 4, np.random.default_rng(0))
    assert lw.shape == (24, 24) and (lw[:16, :16].numpy() == lab).all() and (lw[16:, :] == IGNORE).all()
    for f in feats:  # every level: the part beyond the image holds features, not zero padding
        k = f.shape[-1] * 64 // 96
        assert f[:, k:, k:].abs().amax() > 0
    img, lab2 = train_irn.mirror_to_min_side(np.arange(2 * 8 * 3).reshape(2, 8, 3).astype(np.uint8), np.zeros((1, 2)), 0)
    assert img.shape == (2, 8, 3) and lab2.shape == (1, 2)


def test_an_irn_cache_too_large_for_the_memory_is_refused_after_one_image(dataset: Path, monkeypatch):
    import torch

    from histowsss.data.transforms import Normalizer
    from histowsss.engine import memory
    from histowsss.steps.irn_common import build_irn

    cfg = make_cfg(dataset)
    model = build_irn(cfg)
    samples = samples_for(cfg, ["train"])
    labels = [np.zeros((16, 16), np.uint8) for _ in samples]
    loaded = []
    monkeypatch.setattr(train_irn, "load_image", lambda *a, **k: loaded.append(1) or np.zeros((64, 64, 3), np.uint8))
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1000)
    with pytest.raises(memory.CacheTooLarge, match=r"train_irn: caching features of 4 images .* lower train_irn"):
        train_irn.FeatureCache(model, samples, labels, cfg.data, 2, Normalizer(model.backbone.mean,
                               model.backbone.std), torch.device("cpu"))
    assert len(loaded) == 1  # refused after the first image, not after caching them all
