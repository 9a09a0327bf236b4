"""The CAM stage end to end on tiny synthetic data: files, metrics, restart, refusal to overwrite."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from histowsss.config import load_config
from histowsss.data.synthetic import generate_synthetic_dataset
from histowsss.engine.pipeline import run_pipeline
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.steps import eval_cam

FAST = ["train_cam.epochs=2", "train_cam.crop_size=48", "train_cam.crops_per_image=4", "train_cam.cache_copies=2",
        "train_cam.head_channels=32", "make_cam.scales=[1.0]", "make_cam.flip=false",
        "train_cam.min_epochs_before_diagnosis=5"]


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), {"train": 8, "val": 2, "test": 4}, size=64)


def _cfg(manifest, extra=()):
    return load_config("demo", [f"data.manifest={manifest}"] + FAST + list(extra))


def test_cam_stage_runs_and_writes_its_files(tiny_manifest, tmp_path):
    cfg = _cfg(tiny_manifest)
    rd = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, rd, stop="eval_cam", log=lambda s: None)
    assert (rd.path / "checkpoints" / "cam.safetensors").exists()
    assert (rd.path / "config.yaml").exists() and (rd.path / "versions.json").exists()
    log = [json.loads(x) for x in (rd.path / "logs" / "train_cam.jsonl").read_text().splitlines()]
    assert len(log) == 2 and {"loss", "acc", "auc", "chance_bce"} <= set(log[0])
    cams = sorted((rd.path / "cams").glob("*.npz"))
    assert len(cams) == 14
    with np.load(cams[0]) as z:
        assert z["cam"].shape[0] == 1 and z["cam"].shape[1:] == (16, 16)  # malignant channel, stride-4 grid
        assert list(z["classes"]) == ["malignant"]
    m = json.loads((rd.path / "metrics" / "cam.json").read_text())
    assert m["mode"] == "threshold" and m["chosen_on"] == ["train", "val"]
    assert set(m["splits"]) == {"train", "val", "test"}
    assert "label_gating" not in m["splits"]["test"]  # test labels are not used for gating
    for key in ("miou", "fwiou", "mdice", "per_class"):
        assert key in m["splits"]["test"]["predicted_gating"]
    # what later steps read of it: the choices and training scores, not the test scores
    assert rd.status("eval_cam")["handoff"] == eval_cam.handoff_digest(m)
    test_changed = {**m, "splits": {**m["splits"], "test": {}}, "masked_images": {**m["masked_images"], "test": 0}}
    assert eval_cam.handoff_digest(test_changed) == eval_cam.handoff_digest(m)
    assert eval_cam.handoff_digest({**m, "chosen_gate": m["chosen_gate"] + 0.1}) != eval_cam.handoff_digest(m)
    train_changed = {**m, "splits": {**m["splits"], "train": {}}}
    assert eval_cam.handoff_digest(train_changed) != eval_cam.handoff_digest(m)
    # finished steps are skipped, and a finished step refuses to run again without overwrite
    messages = []
    run_pipeline(cfg, rd, stop="eval_cam", log=messages.append)
    assert all(s.startswith("[skip]") for s in messages)
    from histowsss.steps import train_cam

    with pytest.raises(StepError, match="--overwrite"):
        train_cam.run(cfg, rd)


def test_cam_stage_on_a_vision_transformer_backbone(tiny_manifest, tmp_path):
    """A frozen ViT (cached token maps, 16-px grid) trains the CAM head and gives CAMs on the stride-4 grid."""
    cfg = _cfg(tiny_manifest, ["backbone.name=vit_tiny_patch16_224", "backbone.weights=none",
                               "backbone.model_kwargs={depth: 2}"])
    rd = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, rd, stop="eval_cam", log=lambda s: None)
    with np.load(sorted((rd.path / "cams").glob("*.npz"))[0]) as z:
        assert z["cam"].shape == (1, 16, 16)
    assert json.loads((rd.path / "metrics" / "cam.json").read_text())["splits"]["test"]["predicted_gating"]["miou"]


def test_make_cam_requires_train_cam_of_the_same_config(tiny_manifest, tmp_path):
    cfg = _cfg(tiny_manifest)
    rd = RunDir(tmp_path / "run", cfg).init()
    from histowsss.steps import make_cam

    with pytest.raises(StepError, match="has not finished"):
        make_cam.run(cfg, rd)
    run_pipeline(cfg, rd, stop="train_cam", log=lambda s: None)
    other = _cfg(tiny_manifest, ["train_cam.lr=0.01"])
    # the message says which setting differs from the one train_cam ran with (the likely missing --set)
    with pytest.raises(StepError, match=r"another configuration .*train_cam ran with train_cam\.lr = 0\.001 "
                                        r"\(now 0\.01\): give those settings again"):
        make_cam.run(other, RunDir(rd.path, other))


def test_eval_cam_requires_the_cams_of_its_config(tiny_manifest, tmp_path):
    """eval_cam never scores CAMs made with other make_cam settings (its choices feed the later steps)."""
    from histowsss.steps import eval_cam

    cfg = _cfg(tiny_manifest)
    rd = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, rd, stop="make_cam", log=lambda s: None)
    other = _cfg(tiny_manifest, ["make_cam.scales=[1.0,2.0]"])
    with pytest.raises(StepError, match="make_cam outputs .* another configuration"):
        eval_cam.run(other, RunDir(rd.path, other))
    # a CAM file of another make_cam among those of this one (a killed, redone make_cam) is named
    name = sorted((rd.path / "cams").glob("*.npz"))[0]
    with np.load(name) as z:
        stale = dict(z)
    stale["config_hash"] = np.array("0123456789ab")
    np.savez_compressed(name, **stale)
    with pytest.raises(StepError, match=f"{name.name}: CAM from another configuration"):
        eval_cam.run(cfg, rd)


def test_train_cam_resumes_after_a_crash(tiny_manifest, tmp_path, kill_after_epoch):
    cfg = _cfg(tiny_manifest, ["train_cam.epochs=3"])
    rd = RunDir(tmp_path / "run", cfg).init()
    from histowsss.steps import train_cam

    kill_after_epoch(2, train_cam.run, cfg, rd)
    assert rd.status("train_cam")["state"] == "failed"
    # the resume point leaves out the pretrained backbone frozen whole (rebuilt from its weights on resume)
    from safetensors import safe_open

    with safe_open(str(rd.path / "checkpoints" / "cam_last.safetensors"), framework="pt") as f:
        assert f.metadata()["skipped"] == "backbone." and f.keys() and not any(k.startswith("backbone.")
                                                                                 for k in f.keys())
    train_cam.run(cfg, rd)
    log = [json.loads(x) for x in (rd.path / "logs" / "train_cam.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]  # epochs 0-1 kept, only epoch 2 trained after the restart
    assert rd.status("train_cam")["state"] == "done"
    # the resumed network is the one an uninterrupted run trains, bit for bit
    whole = RunDir(tmp_path / "whole", cfg).init()
    train_cam.run(cfg, whole)
    assert (whole.path / "checkpoints" / "cam.safetensors").read_bytes() == \
        (rd.path / "checkpoints" / "cam.safetensors").read_bytes()
    with safe_open(str(rd.path / "checkpoints" / "cam.safetensors"), framework="pt") as f:
        assert any(k.startswith("backbone.") for k in f.keys())  # the finished network stands on its own


@pytest.mark.parametrize("frozen", [5, 2])  # 2: the mid level lies past the cached trunk (it once crashed)
def test_rpnet_trains_through_the_same_step(tiny_manifest, tmp_path, frozen):
    cfg = _cfg(tiny_manifest, ["train_cam.network=rpnet", "train_cam.epochs=1", f"backbone.frozen_stages={frozen}"])
    rd = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, rd, stop="make_cam", log=lambda s: None)
    log = [json.loads(x) for x in (rd.path / "logs" / "train_cam.jsonl").read_text().splitlines()]
    assert log[0]["aux_loss"] is not None
    assert len(list((rd.path / "cams").glob("*.npz"))) == 14


def test_isolated_patches_and_patchwise_cams(tiny_manifest, tmp_path):
    """Patch-based processing: backbone run on each patch alone in training and in make_cam."""
    cfg = _cfg(tiny_manifest, ["data.patches.size=32", "data.patches.stride=16", "data.patches.label_rule=image",
                               "train_cam.isolate_patches=true", "make_cam.patch_size=32", "train_cam.epochs=1"])
    rd = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, rd, stop="eval_cam", log=lambda s: None)
    with np.load(next((rd.path / "cams").glob("*.npz"))) as z:
        assert z["cam"].shape == (1, 16, 16) and np.isfinite(z["cam"]).all()
    assert rd.status("eval_cam")["state"] == "done"


def test_patchwise_cam_of_a_translation_invariant_net_matches_whole_image():
    """A 1x1 'network' has no context, so patch-wise and whole-image CAMs agree (stitching is exact)."""
    import torch

    from histowsss.data.transforms import Normalizer
    from histowsss.steps.make_cam import multiscale_cam, patchwise_cam

    class PixelNet(torch.nn.Module):
        def forward(self, x):
            cam = torch.nn.functional.avg_pool2d(x[:, :1] + 1.0, 4)  # stride-4 map, no context beyond 4 px
            return {"cam": cam, "logits": cam.mean(dim=(2, 3))}

    from scipy import ndimage as ndi

    noise = np.random.default_rng(0).random((48, 64, 3))
    img = (ndi.gaussian_filter(noise, (6, 6, 0)) * 255 / noise.max()).astype(np.uint8)  # smooth: interpolation-safe
    norm = Normalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    whole, _ = multiscale_cam(PixelNet(), img, [1.0], False, norm, torch.device("cpu"), channels_last=False)
    patched, _ = patchwise_cam(PixelNet(), img, [1.0], False, norm, torch.device("cpu"), 16, channels_last=False)
    assert patched.shape == whole.shape
    assert np.abs(patched - whole)[:, 1:-1, 1:-1].max() < 0.02 * whole.max()


def test_flipped_cams_land_where_the_unflipped_ones_do():
    """Width 200 is not a multiple of 16: the flipped image's stride-16 cells start 8 px off; its CAM, flipped back,
    must still peak at the object, not a cell away."""
    import torch

    from histowsss.data.transforms import Normalizer
    from histowsss.steps.make_cam import multiscale_cam

    class Stride16Net(torch.nn.Module):  # a mirror-symmetric CAM with output stride 16 ('same' padding: ceil)
        def forward(self, x):
            h, w = x.shape[-2:]
            x = torch.nn.functional.pad(x[:, :1] + 1.0, (0, -w % 16, 0, -h % 16))
            cam = torch.nn.functional.avg_pool2d(x, 16)
            return {"cam": cam, "logits": cam.mean(dim=(2, 3))}

    img = np.zeros((64, 200, 3), np.uint8)
    img[24:40, 90:110] = 255  # a bright blob centred at x = 100
    norm = Normalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    plain, _ = multiscale_cam(Stride16Net(), img, [1.0], False, norm, torch.device("cpu"), channels_last=False)
    both, _ = multiscale_cam(Stride16Net(), img, [1.0], True, norm, torch.device("cpu"), channels_last=False)
    flipped_back = both - plain
    assert plain.shape == (1, 16, 50)

    def centre(cam):  # column centre of mass of the blob's row, in pixels
        row = cam[0].max(axis=0) - cam[0].min()
        return float((row * (4 * np.arange(row.size) + 1.5)).sum() / row.sum())

    assert abs(centre(plain) - 100) < 4 and abs(centre(flipped_back) - centre(plain)) < 2


class _Stride16Net:
    """A mirror-symmetric CAM 'network' with output stride 16 ('same' padding: ceil), for alignment tests."""

    def __new__(cls):
        import torch

        class Net(torch.nn.Module):
            def forward(self, x):
                h, w = x.shape[-2:]
                x = torch.nn.functional.pad(x[:, :1] + 1.0, (0, -w % 16, 0, -h % 16))
                cam = torch.nn.functional.avg_pool2d(x, 16)
                return {"cam": cam, "logits": cam.mean(dim=(2, 3))}

        return Net()


def _blob_centre(cam: np.ndarray) -> float:
    """Column centre of mass (in pixels of the stride-4 grid's image) of a CAM's brightest row profile."""
    row = cam[0].max(axis=0) - cam[0].min()
    return float((row * (4 * np.arange(row.size) + 1.5)).sum() / row.sum())


def test_patchwise_flipped_cams_land_where_the_unflipped_ones_do():
    """Patches of 40 px are not a multiple of the stride: each flipped patch's CAM must be put on its own pixels
    before it is flipped back, or the two views disagree by part of a cell."""
    import torch

    from histowsss.data.transforms import Normalizer
    from histowsss.steps.make_cam import patchwise_cam

    img = np.zeros((80, 200, 3), np.uint8)
    img[32:48, 90:110] = 255  # a bright blob centred at x = 100
    norm = Normalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    args = (_Stride16Net(), img, [1.0])
    plain, _ = patchwise_cam(*args, False, norm, torch.device("cpu"), 40, channels_last=False)
    both, _ = patchwise_cam(*args, True, norm, torch.device("cpu"), 40, channels_last=False)
    flipped_back = 2 * both - plain  # both = 0.5 (plain + flipped back)
    assert plain.shape == (1, 20, 50)
    assert abs(_blob_centre(flipped_back) - _blob_centre(plain)) < 1.5


def test_input_scale_cam_lands_on_the_original_grid():
    """make_cam.input_scale: the network sees a smaller copy; its CAM must land on the original image's stride-4
    grid at the object (200 px at scale 0.5 is 100 px, whose stride-4 grid of 25 cells is not half of 50)."""
    import torch

    from histowsss.config import load_config
    from histowsss.data.transforms import Normalizer
    from histowsss.steps.make_cam import image_cam

    cfg = load_config("demo", ["make_cam.input_scale=0.5", "make_cam.scales=[1.0]", "make_cam.flip=false"])
    img = np.zeros((64, 200, 3), np.uint8)
    img[24:40, 150:170] = 255  # centred at x = 160, near the far edge where a stretch errs most
    norm = Normalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    cam, _ = image_cam(_Stride16Net(), img, cfg, norm, torch.device("cpu"))
    assert cam.shape == (1, 16, 50)
    full = cfg.model_copy(update={"make_cam": cfg.make_cam.model_copy(update={"input_scale": 1.0})})
    ref, _ = image_cam(_Stride16Net(), img, full, norm, torch.device("cpu"))
    assert abs(_blob_centre(cam) - _blob_centre(ref)) < 3


def test_a_trunk_cache_too_large_for_the_memory_is_refused(tiny_manifest, tmp_path, monkeypatch):
    from histowsss.engine import memory

    monkeypatch.setattr(memory, "free_bytes", lambda device: 1000)
    cfg = _cfg(tiny_manifest)
    rd = RunDir(tmp_path / "run", cfg).init()
    with pytest.raises(memory.CacheTooLarge, match=r"train_cam: caching features of 8 images .*train_cam.cache_copies"):
        run_pipeline(cfg, rd, stop="train_cam", log=lambda s: None)
    assert rd.status("train_cam")["state"] != "done"


def test_cam_on_pixels_finds_the_stride_of_grids_rounded_up_or_down():
    import torch

    from histowsss.steps.make_cam import cam_on_pixels

    cam = torch.arange(4.0).view(1, 1, 2, 2)
    up = cam_on_pixels(cam, (40, 40))  # ceil(40 / 32) = 2 and 40 // 16 = 2: the nearer to 40 / 2 = 20 is 16
    assert up.shape[-2:] == (40, 40)
    assert torch.allclose(up[0, 0, 0, :8], torch.zeros(8)) and torch.allclose(up[0, 0, 0, 32:], torch.ones(8))
    assert cam_on_pixels(torch.zeros(1, 1, 3, 3), (40, 40)).shape[-2:] == (40, 40)  # ceil(40 / 16) = 3
    assert cam_on_pixels(torch.zeros(1, 1, 5, 7), (40, 40)).shape[-2:] == (40, 40)  # no stride fits: stretched


@pytest.mark.parametrize("cached", [True, False])
def test_training_images_smaller_than_the_crop_are_mirrored_or_refused(tiny_manifest, tmp_path, cached):
    """64-px images, a 96-px crop: mirrored out to the crop (cached trunk features or pixel crops), counted in the
    step's status; with small_images=refuse the step names the first image and the fixes."""
    small = ["train_cam.crop_size=96", f"train_cam.cache_features={str(cached).lower()}"]
    cfg = _cfg(tiny_manifest, small)
    rd = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, rd, stop="train_cam", log=lambda s: None)
    status = json.loads((rd.path / "status" / "train_cam.json").read_text())
    assert status["state"] == "done" and status["mirrored_images"] == 8  # every train image
    refuse = _cfg(tiny_manifest, small + ["train_cam.small_images=refuse"])
    with pytest.raises(ValueError, match=r"\.png: image 64x64 .* smaller than the training crop 96; lower "
                                         r"train_cam.crop_size, set train_cam.small_images=mirror"):
        run_pipeline(refuse, RunDir(tmp_path / "refused", refuse).init(), stop="train_cam", log=lambda s: None)


def test_make_cam_cpu_amp_runs_the_cam_network_in_bfloat16():
    """make_cam.cpu_amp: the CAM network runs under bfloat16 autocast; CAMs and logits come back float32, close to
    the float32 ones; the option enters make_cam's hash only when on."""
    import torch

    from histowsss.data.transforms import Normalizer
    from histowsss.steps import make_cam
    from histowsss.steps.make_cam import image_cam

    class Spy(torch.nn.Module):  # a 1x1 convolution (autocast lowers it to bfloat16), pooled to stride 16
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 1)
            with torch.no_grad():  # positive, so the ReLU'd CAM is not all zero
                self.conv.weight.copy_(torch.tensor([0.31, 0.57, 0.23]).view(1, 3, 1, 1))
                self.conv.bias.fill_(2.1)
            self.autocast: list[bool] = []

        def forward(self, x):
            self.autocast.append(torch.is_autocast_enabled("cpu"))
            h, w = x.shape[-2:]
            cam = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(self.conv(x), (0, -w % 16, 0, -h % 16)), 16)
            return {"cam": cam, "logits": cam.mean(dim=(2, 3))}

    img = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    norm = Normalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    out = {}
    for on in (False, True):
        cfg = load_config("demo", [f"make_cam.cpu_amp={str(on).lower()}", "make_cam.scales=[1.0, 1.5]"])
        spy = Spy()
        out[on] = image_cam(spy, img, cfg, norm, torch.device("cpu"))
        assert spy.autocast and all(a == on for a in spy.autocast)
        assert out[on][0].dtype == np.float32 and out[on][1].dtype == np.float32
    assert not np.array_equal(out[True][0], out[False][0])  # the convolution did run in bfloat16
    np.testing.assert_allclose(out[True][0], out[False][0], atol=0.02 * float(np.abs(out[False][0]).max()))
    base = load_config("demo")
    assert make_cam.config_hash(base) == make_cam.config_hash(load_config("demo", ["make_cam.cpu_amp=false"]))
    assert make_cam.config_hash(base) != make_cam.config_hash(load_config("demo", ["make_cam.cpu_amp=true"]))


def test_a_resumed_make_cam_makes_a_damaged_cam_again(tiny_manifest, tmp_path):
    """A CAM file cut short by a machine crash is not taken for a finished one: make_cam, resumed, writes it anew."""
    from histowsss.engine.atomic import read_npz
    from histowsss.steps import make_cam

    cfg = _cfg(tiny_manifest)
    rd = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, rd, stop="make_cam", log=lambda s: None)
    files = sorted((rd.path / "cams").glob("*.npz"))
    whole = files[0].read_bytes()
    files[0].write_bytes(whole[:100])
    record = json.loads(rd.status_path("make_cam").read_text())
    rd.status_path("make_cam").write_text(json.dumps(dict(record, state="failed")))  # as a killed run leaves it
    make_cam.run(cfg, rd)
    assert rd.status("make_cam")["state"] == "done"
    np.testing.assert_array_equal(read_npz(files[0])["cam"], np.load(io.BytesIO(whole))["cam"])


def test_false_foreground_of_background_images_skips_ignore_pixels():
    """An all-background image with unlabelled (255) pixels is still a background image, and its ignore pixels are
    neither counted nor scored."""
    from histowsss.steps.eval_cam import _false_fg

    cfg = load_config("demo")  # benign (background) / malignant, threshold mode
    gt = np.zeros((4, 4), np.uint8)
    gt[:, :2] = 255  # half the image unlabelled
    cam = np.zeros((1, 4, 4), np.float32)
    cam[0, :, 0] = 1.0  # malignant called on one ignore column and nothing else
    cam[0, 0, 3] = 1.0  # and on one labelled pixel
    item = {"gt": gt, "cam": cam, "probs": np.array([0.9], np.float32)}
    assert _false_fg([item], cfg, "threshold", 0.5, 0.5) == round(100 * 1 / 8, 2)


def test_the_schedule_covers_every_batch_of_a_multi_scale_cache(tiny_manifest):
    """Cached copies batch per scale, so an epoch can take more batches than a plain split; the learning-rate
    schedule is as long as the most an epoch can take (it once ended early and trained the last steps at LR 0)."""
    from histowsss.data.crops import image_targets, random_crop_examples
    from histowsss.data.transforms import Normalizer
    from histowsss.engine.crop_sources import CachedTrunkSource
    from histowsss.steps.common import build_cam_network, samples_for

    cfg = _cfg(tiny_manifest, ["train_cam.cache_scales=[1.0,0.75]", "train_cam.cache_copies=2"])
    samples = samples_for(cfg, ["train"])
    model = build_cam_network(cfg)
    norm = Normalizer(model.backbone.mean, model.backbone.std)
    src = CachedTrunkSource(model, samples, cfg.data, cfg.train_cam, norm, torch.device("cpu"), 0, False)
    targets = image_targets(samples, cfg.data)
    sizes = [(64, 64)] * len(samples)
    counts = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        ex = random_crop_examples(targets, sizes, 48, 3, rng)  # 24 crops, batch 8: a plain split takes 3
        counts.append(sum(1 for _ in src.batches(ex, 8, rng, torch.device("cpu"))))
    bound = src.max_steps(24, 8)
    assert max(counts) > 3 and max(counts) <= bound == 4


def test_a_diverged_classifier_gets_the_diagnosis_not_a_crash(tiny_manifest, tmp_path, monkeypatch):
    from histowsss.engine.diagnostics import TrainingFailure
    from histowsss.models.cam import CamNet
    from histowsss.steps import train_cam

    real = CamNet.forward

    def nan_forward(self, *a, **k):
        out = real(self, *a, **k)
        out["logits"] = out["logits"] * float("nan")
        return out

    monkeypatch.setattr(CamNet, "forward", nan_forward)
    cfg = _cfg(tiny_manifest, ["train_cam.epochs=1"])
    with pytest.raises(TrainingFailure, match="diverged"):
        train_cam.run(cfg, RunDir(tmp_path / "run", cfg).init())


def test_a_class_no_training_image_carries_is_refused_before_training(tiny_manifest, tmp_path):
    """A class named in data.classes that no training image is labelled with cannot be learnt: refused at once (as
    `data check` says), not trained for and then scored 0."""
    from histowsss.engine.run_dir import StepError
    from histowsss.steps import train_cam

    cfg = load_config("demo", [f"data.manifest={tiny_manifest}"] + FAST)
    names = list(cfg.data.classes.names) + ["mucin"]
    cfg = load_config("demo", [f"data.manifest={tiny_manifest}", f"data.classes.names=[{', '.join(names)}]"] + FAST)
    with pytest.raises(StepError, match="class 'mucin' has no image in the training splits"):
        train_cam.run(cfg, RunDir(tmp_path / "run", cfg).init())
    from histowsss.data.manifest import ManifestError
    from histowsss.engine.pipeline import plan_steps

    with pytest.raises(ManifestError, match="class 'mucin' has no image in the training splits"):  # (before any step:
        plan_steps(cfg, RunDir(tmp_path / "run2", cfg))  # `run --dry-run` says it too)


def test_a_class_no_training_patch_carries_is_refused_before_training(tiny_manifest, tmp_path):
    """Labels read off the masks by patch: a class no training patch carries (here: no patch is > 99 % gland) is
    refused by name when the patches are cut, not trained at chance level."""
    from histowsss.engine.run_dir import StepError
    from histowsss.steps import train_cam

    cfg = _cfg(tiny_manifest, ["data.label_column=null", "data.classes.names=[background,gland]",
                               "data.classes.background=background", "data.classes.colors={}",
                               "data.mask_mode=binary", "data.mask_foreground_class=gland",
                               "data.patches={size: 32, stride: 32, border: shift, label_rule: mask_fraction, "
                               "min_fraction: 0.99}"])
    with pytest.raises(StepError, match=r"class\(es\) 'gland' carried by no training patch"):
        train_cam.run(cfg, RunDir(tmp_path / "run", cfg).init())


def test_cached_features_of_a_padded_patch_come_from_its_own_window(tiny_manifest):
    """border: pad: the cache holds each image padded as far as its patches reach, so a patch past the border
    takes the features of the window its label was counted on (at its own offset, not moved back inside)."""
    from histowsss.data.crops import patch_examples
    from histowsss.data.transforms import Normalizer
    from histowsss.engine.crop_sources import CachedTrunkSource
    from histowsss.steps.common import build_cam_network, samples_for

    cfg = _cfg(tiny_manifest, ["data.patches={size: 48, stride: 40, border: pad, label_rule: image}",
                               "train_cam.cache_copies=1"])
    samples = samples_for(cfg, ["train"])[:2]
    model = build_cam_network(cfg)
    src = CachedTrunkSource(model, samples, cfg.data, cfg.train_cam, Normalizer(model.backbone.mean,
                            model.backbone.std), torch.device("cpu"), 0, False)
    f, _, _, (h, w), _ = src.copies[0][0]
    assert (h, w) == (88, 88)  # 64-px images, patches at 0 and 40 reach 88
    ex = [e for e in patch_examples(samples, cfg.data, [(64, 64)] * 2) if e.image == 0 and e.x == 40 and e.y == 40]
    got = next(src.batches(ex, 1, np.random.default_rng(0), torch.device("cpu")))[0][0]
    cells = got.shape[-1]
    c0 = round(40 / src.stride)
    assert c0 + cells <= f.shape[2]  # the window is not clamped back inside
    torch.testing.assert_close(got, f[:, c0 : c0 + cells, c0 : c0 + cells].float())


def test_a_weights_file_changed_in_place_makes_its_steps_again(tiny_manifest, tmp_path):
    """backbone.weights is hashed by its path; its contents are fingerprinted in the status of the steps that read
    it: the same file skips, other contents at the same path make train_cam again, a file gone says nothing."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "fm.safetensors"

    def write(seed: int) -> None:
        torch.manual_seed(seed)
        m = timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=1, init_values=1e-5)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))

    write(0)
    cfg = _cfg(tiny_manifest, ["backbone.name=vit_tiny_patch16_224", f"backbone.weights={path}",
                               "backbone.model_kwargs={depth: 1, init_values: 1e-5}", "backbone.mean=[0.5,0.5,0.5]",
                               "backbone.std=[0.5,0.5,0.5]", "train_cam.epochs=1"])
    rd = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, rd, stop="train_cam", log=lambda s: None)
    assert rd.status("train_cam")["backbone_weights"] == cfg.backbone_digest()
    messages: list[str] = []
    assert run_pipeline(cfg, rd, stop="train_cam", log=messages.append) == {}
    write(1)
    # under torchrun a step to be made again is refused as one never run: it would run in every process
    import os

    from histowsss.config import ConfigError
    from histowsss.engine.pipeline import plan_steps

    os.environ["WORLD_SIZE"] = "2"
    try:
        with pytest.raises(ConfigError, match="train_cam would run in each of the 2 torchrun processes"):
            plan_steps(cfg, rd, None, "train_cam", False)
    finally:
        del os.environ["WORLD_SIZE"]
    messages.clear()
    assert "train_cam" in run_pipeline(cfg, rd, stop="train_cam", log=messages.append)
    assert any("weights file (backbone.weights) changed" in m for m in messages)
    # a stopped train_cam on a file changed since starts over, saying only that
    status = json.loads((rd.path / "status" / "train_cam.json").read_text())
    status.update(state="failed", backbone_weights="0" * 16)
    (rd.path / "status" / "train_cam.json").write_text(json.dumps(status))
    messages.clear()
    run_pipeline(cfg, rd, stop="train_cam", log=messages.append)
    assert [m for m in messages if m.startswith("[run ]")] == [
        "[run ] train_cam: starts over, not from where it stopped (the weights file (backbone.weights) changed)"]
    # the whole file is fingerprinted (a change in the middle counts), a folder or a missing file is no fingerprint
    from histowsss.config.run import _file_fingerprint

    big = tmp_path / "big.bin"
    big.write_bytes(bytes(40 << 20))
    before = _file_fingerprint(big)
    with open(big, "r+b") as f:
        f.seek(20 << 20)
        f.write(b"x")
    assert _file_fingerprint(big) != before and _file_fingerprint(tmp_path) is None
    path.unlink()
    assert run_pipeline(cfg, rd, stop="train_cam", log=lambda s: None) == {}  # not there: nothing to compare


def test_make_cam_says_what_vit_scales_cost_on_the_cpu(tiny_manifest, tmp_path, capsys):
    cfg = _cfg(tiny_manifest, ["backbone.name=vit_tiny_patch16_224", "backbone.weights=none",
                               "backbone.model_kwargs={depth: 1}", "train_cam.epochs=1", "make_cam.scales=[1.0,1.5]",
                               "make_cam.splits=[test]"])
    rd = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, rd, stop="make_cam", log=lambda s: None)
    assert "make_cam: a vision transformer on the CPU at scales [1.0, 1.5]" in capsys.readouterr().out


def test_test_images_added_cost_their_cams_and_leave_the_training_side_standing(tiny_manifest, tmp_path):
    """make_cam made again because test images were added keeps the CAMs that still hold (same settings, image
    contents and network) and makes the new ones; the IRN's labels, made from the training images' CAMs, stand.
    A training image replaced under its name makes its CAM and the training side again."""
    import shutil

    from PIL import Image

    from histowsss.engine.standing import steps_standing

    data = tmp_path / "data"
    shutil.copytree(tiny_manifest.parent, data)
    manifest = data / tiny_manifest.name
    cfg = _cfg(manifest)
    rd = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, rd, stop="cam_to_ir_label", log=lambda s: None)
    lines = manifest.read_text().splitlines()
    test_row = next(r for r in lines if ",test," in r)
    name = test_row.split(",")[lines[0].split(",").index("name")]
    manifest.write_text("\n".join(lines + [test_row.replace(name, name + "_added")]) + "\n")
    shutil.copy(data / "images" / f"{name}.png", data / "images" / f"{name}_added.png")
    shutil.copy(data / "masks" / f"{name}.png", data / "masks" / f"{name}_added.png")
    if (data / "masks_cc" / f"{name}.png").exists():
        shutil.copy(data / "masks_cc" / f"{name}.png", data / "masks_cc" / f"{name}_added.png")
    standing = steps_standing(cfg, rd)
    assert standing["make_cam"] and standing["eval_cam"] and standing["cam_to_ir_label"] is None
    first = rd.status("make_cam")["finished"]
    logs: list[str] = []
    run_pipeline(cfg, rd, stop="cam_to_ir_label", log=logs.append, dry_run=True)  # says so beforehand
    assert [m.split(":")[0] for m in logs[:-1]] == ["[skip] train_cam", "[redo] make_cam", "[redo] eval_cam",
                                                    "[skip] cam_to_ir_label"], logs
    from histowsss.steps import make_cam

    with pytest.raises(KeyboardInterrupt):  # make_cam stopped part-way (Ctrl-C): the same said of what follows
        with rd.step("make_cam", make_cam.config_hash(cfg), overwrite=True):
            raise KeyboardInterrupt
    logs.clear()
    run_pipeline(cfg, rd, stop="cam_to_ir_label", log=logs.append, dry_run=True)
    assert [m.split(":")[0] for m in logs[:-1]] == ["[skip] train_cam", "[run ] make_cam", "[redo] eval_cam",
                                                    "[skip] cam_to_ir_label"], logs
    assert "goes on from where it stopped (interrupted at " in logs[1]
    assert steps_standing(cfg, rd)["cam_to_ir_label"] is None
    logs.clear()
    run_pipeline(cfg, rd, stop="cam_to_ir_label", log=logs.append)
    decided = [m.split(":")[0] for m in logs if not m.startswith("[done]")]
    assert decided == ["[skip] train_cam", "[run ] make_cam", "[redo] eval_cam", "[skip] cam_to_ir_label"], logs
    st = rd.status("make_cam")
    assert (st["computed"], st["reused"]) == (1, 14)  # the added image's CAM only
    assert st["train_handoff_since"] == first and st["handoff_since"] == st["finished"]
    train_image = data / "images" / "syn_train_000.png"
    with Image.open(train_image) as im:
        Image.fromarray(np.asarray(im.convert("RGB"))[:, ::-1].copy()).save(train_image)
    logs.clear()
    run_pipeline(cfg, rd, stop="cam_to_ir_label", log=logs.append)
    decided = [m.split(":")[0] for m in logs if not m.startswith("[done]")]
    assert decided == ["[redo] train_cam", "[redo] make_cam", "[redo] eval_cam", "[redo] cam_to_ir_label"], logs
    assert rd.status("make_cam")["computed"] == 15  # a new network: every CAM again


def test_a_split_only_the_irn_reads_is_watched_and_the_dry_run_says_what_the_run_does(tiny_manifest, tmp_path):
    """ir_label.splits may name a split no other training step reads: a label fixed there makes the IRN's labels
    again (not train_cam); an image replaced there makes its CAM and the IRN's labels again, and the dry run, the
    stale marks and the run agree (make_cam's training part predicted from the images and checkpoint of now)."""
    import csv
    import shutil

    from PIL import Image

    from histowsss.engine.standing import steps_standing

    data = tmp_path / "data"
    shutil.copytree(tiny_manifest.parent, data)
    manifest = data / tiny_manifest.name
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in [r for r in rows if r["split"] == "train"][:2]:
        r["split"] = "extra"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = _cfg(manifest, ["make_cam.splits=[train,val,test,extra]", "ir_label.splits=[train,val,extra]"])
    rd = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, rd, stop="cam_to_ir_label", log=lambda s: None)

    def dry() -> list[str]:
        logs: list[str] = []
        run_pipeline(cfg, rd, stop="cam_to_ir_label", log=logs.append, dry_run=True)
        return [m.split(":")[0] for m in logs[:-1]]

    extra = next(r for r in rows if r["split"] == "extra")
    text = manifest.read_text()
    label = "malignant" if extra["grade"] == "benign" else "benign"
    manifest.write_text(text.replace(f",extra,{extra['patient']},{extra['grade']},",
                                     f",extra,{extra['patient']},{label},", 1))
    assert manifest.read_text() != text
    assert dry() == ["[skip] train_cam", "[skip] make_cam", "[redo] eval_cam", "[redo] cam_to_ir_label"]
    manifest.write_text(text)
    image = data / extra["image"]
    with Image.open(image) as im:
        Image.fromarray(np.asarray(im.convert("RGB"))[:, ::-1].copy()).save(image)
    assert dry() == ["[skip] train_cam", "[redo] make_cam", "[redo] eval_cam", "[redo] cam_to_ir_label"]
    assert steps_standing(cfg, rd)["cam_to_ir_label"] is not None
    logs: list[str] = []
    run_pipeline(cfg, rd, stop="cam_to_ir_label", log=logs.append)
    assert [m.split(":")[0] for m in logs if not m.startswith("[done]")] == [
        "[skip] train_cam", "[redo] make_cam", "[redo] eval_cam", "[redo] cam_to_ir_label"]
    assert rd.status("make_cam")["computed"] == 1


def test_a_cam_file_without_a_settings_hash_is_made_again(tmp_path):
    """CAM files of an early version hold no config hash: make_cam makes them again instead of failing."""
    from histowsss.engine.atomic import write_npz
    from histowsss.steps.make_cam import _holds

    path = tmp_path / "x.npz"
    write_npz(path, cam=np.zeros((1, 2, 2), np.float16))
    assert not _holds(path, "h", "img", "net", strict=False)
    write_npz(path, cam=np.zeros((1, 2, 2), np.float16), config_hash=np.array("h"))
    assert _holds(path, "h", "img", "net", strict=False) and not _holds(path, "h", "img", "net", strict=True)
    write_npz(path, cam=np.zeros((1, 2, 2), np.float16), config_hash=np.array("h"), image=np.array("img"),
              network=np.array("net"))
    assert _holds(path, "h", "img", "net", strict=True) and not _holds(path, "h", "img2", "net", strict=False)


def test_going_back_after_a_stopped_make_cam_of_other_settings_costs_the_cams_it_rewrote(tiny_manifest, tmp_path,
                                                                                        monkeypatch):
    """make_cam with other scales stopped after rewriting 5 CAMs; going back to the settings before, make_cam
    computes those 5 again and keeps the rest, and nothing after it is made again (eval_cam, the IRN: their inputs
    come out as they were); the dry run says the same."""
    from histowsss.steps import make_cam

    x = _cfg(tiny_manifest)
    y = _cfg(tiny_manifest, ["make_cam.scales=[1.0,1.5]"])
    rd = RunDir(tmp_path / "run", x).init()
    run_pipeline(x, rd, stop="cam_to_ir_label", log=lambda s: None)
    made = [0]
    image_cam = make_cam.image_cam

    def stop_after_five(*a, **k):
        made[0] += 1
        if made[0] > 5:
            raise KeyboardInterrupt
        return image_cam(*a, **k)

    monkeypatch.setattr(make_cam, "image_cam", stop_after_five)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(y, RunDir(rd.path, y).init(), stop="cam_to_ir_label", log=lambda s: None)
    monkeypatch.setattr(make_cam, "image_cam", image_cam)
    rx = RunDir(rd.path, x).init()
    for dry_run in (True, False):
        logs: list[str] = []
        run_pipeline(x, rx, stop="cam_to_ir_label", log=logs.append, dry_run=dry_run)
        decided = [m.split(":")[0] for m in logs if m.startswith("[") and not m.startswith("[done]")]
        assert decided == ["[skip] train_cam", "[run ] make_cam", "[skip] eval_cam", "[skip] cam_to_ir_label"], logs
    st = rd.status("make_cam")
    assert (st["computed"], st["reused"]) == (5, 9)
