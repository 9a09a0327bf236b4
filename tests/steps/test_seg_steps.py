"""train_seg / eval_seg on tiny synthetic data, with fake pseudo-masks (no CAM / IRN training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from histowsss.data.masks import load_class_mask, load_instance_mask
from histowsss.engine import checkpoints
from histowsss.engine.pipeline import run_pipeline
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.evaluation.object_score import ObjectScore
from histowsss.ops.label_cleanup import clean_labels
from histowsss.steps import eval_seg, seg_labels, segnet_io, train_seg
from histowsss.steps.common import samples_for
from histowsss.steps.registry import PIPELINE

from tests.steps.seg_fixtures import fake_pseudo, make_cfg


def test_steps_are_registered_after_the_irn_steps():
    assert PIPELINE[-4:] == ["train_seg", "eval_seg", "train_seg_supervised", "eval_seg_supervised"]
    assert PIPELINE.index("train_seg") > PIPELINE.index("eval_sem_seg")


def test_train_and_eval_on_pseudo_masks(dataset: Path, tmp_path: Path):
    cfg = make_cfg(dataset)
    run = RunDir(tmp_path / "run", cfg).init()
    fake_pseudo(cfg, run)
    res = run_pipeline(cfg, run, start="train_seg", stop="eval_seg", log=lambda m: None)
    assert list(res) == ["train_seg", "eval_seg"]
    assert (run.path / "checkpoints" / "seg.safetensors").exists()
    meta = json.loads((run.path / "checkpoints" / "seg.json").read_text())
    assert meta["label_source"] == "pseudo" and meta["loss"] == "oeem" and not meta["supervised"]
    log = [json.loads(x) for x in (run.path / "logs" / "train_seg.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[0]["loss_kind"] == "ce" and log[1]["loss_kind"] == "oeem"  # one warm-up epoch of plain CE
    assert {"loss", "label_acc", "lr", "crops_per_s"} <= set(log[0])
    m = json.loads((run.path / "metrics" / "seg.json").read_text())
    assert set(m["splits"]) == {"test"} and m["all"]["splits"] == ["test"]
    for key in ("miou", "mdice", "fwiou", "pixel_acc", "per_class"):
        assert key in m["all"] and key in m["splits"]["test"]
    assert len(m["per_image"]) == 3 and m["inference"]["tta"] == "flip"
    expected = ObjectScore()
    for s in samples_for(cfg, ["test"]):
        pred = np.asarray(Image.open(run.path / "pred" / f"{s.name}.png"))
        assert pred.shape == (64, 64) and pred.dtype == np.uint8 and pred.max() <= 1
        gt = load_class_mask(s, cfg.data)
        expected.update(load_instance_mask(s, cfg.data, gt, 0), ndimage.label(pred == 1)[0])
    # GlaS object metrics of the prediction's connected components against the manifest's instance masks
    assert m["objects"]["splits"]["test"] == m["objects"]["all"] == expected.summary()
    assert m["objects"]["all"]["images"] == 3 and m["objects"]["all"]["tp"] + m["objects"]["all"]["fn"] > 0
    assert run.status("train_seg")["state"] == "done" and run.status("eval_seg")["state"] == "done"
    # finished steps are skipped; running one again needs --overwrite
    msgs: list[str] = []
    run_pipeline(cfg, run, start="train_seg", stop="eval_seg", log=msgs.append)
    assert all(m.startswith("[skip]") for m in msgs)
    with pytest.raises(StepError, match="overwrite"):
        train_seg.run(cfg, run)
    # eval_seg again on fewer splits, without saving: no prediction of the earlier evaluation stays behind
    (run.path / "pred" / "stale_other_split.png").write_bytes(b"x")
    fewer = make_cfg(dataset, "eval_seg.save_predictions=false")
    eval_seg.run(fewer, run, overwrite=True)
    assert not (run.path / "pred").exists()


def test_missing_pseudo_masks_are_a_clear_error(dataset: Path, tmp_path: Path):
    cfg = make_cfg(dataset, "train_seg.labels=pseudo")  # the demo config's default is best_on_train
    run = RunDir(tmp_path / "run", cfg).init()
    with pytest.raises(StepError, match="make_sem_seg_labels"):
        train_seg.run(cfg, run)


def test_supervised_flag_trains_on_ground_truth(dataset: Path, tmp_path: Path, monkeypatch):
    cfg = make_cfg(dataset, "train_seg.supervised=true", "train_seg.epochs=1")
    run = RunDir(tmp_path / "run", cfg).init()  # no pseudo-masks at all: they must not be needed
    seen: dict = {}
    original = seg_labels.load_labels

    def spy(cfg_, run_, samples, source):
        seen["source"] = source
        seen["labels"] = original(cfg_, run_, samples, source)
        seen["samples"] = samples
        return seen["labels"]

    monkeypatch.setattr(train_seg, "load_labels", spy)
    meta = train_seg.run(cfg, run)
    assert seen["source"] == "ground_truth" and meta["label_source"] == "ground_truth" and meta["loss"] == "ce"
    for s, lab in zip(seen["samples"], seen["labels"]):
        np.testing.assert_array_equal(lab, load_class_mask(s, cfg.data))
    assert {s.split for s in seen["samples"]} == {"train", "val"}
    assert (run.path / "checkpoints" / "seg_supervised.safetensors").exists()
    assert (run.path / "logs" / "train_seg_supervised.jsonl").exists()
    assert not (run.path / "checkpoints" / "seg.safetensors").exists()
    eval_seg.run(cfg, run)
    m = json.loads((run.path / "metrics" / "seg_supervised.json").read_text())
    assert m["supervised"] is True and m["label_source"] == "ground_truth"
    assert len(list((run.path / "pred_supervised").glob("*.png"))) == 3
    assert run.status("train_seg_supervised")["state"] == "done" and run.status("eval_seg_supervised")["state"] == "done"
    assert run.status("train_seg") is None and run.status("eval_seg") is None


def test_weak_and_supervised_networks_stay_finished_side_by_side(dataset: Path, tmp_path: Path):
    """Each network has its own status records: running one never makes the other look unfinished."""
    weak = make_cfg(dataset, "train_seg.epochs=1", "train_seg.labels=pseudo")
    sup = make_cfg(dataset, "train_seg.epochs=1", "train_seg.supervised=true")
    run = RunDir(tmp_path / "run", weak).init()
    fake_pseudo(weak, run)
    quiet = lambda m: None  # noqa: E731
    run_pipeline(weak, run, start="train_seg", stop="eval_seg", log=quiet)
    weak_ckpt = (run.path / "checkpoints" / "seg.safetensors").stat().st_mtime_ns
    run_pipeline(sup, run, start="train_seg", stop="eval_seg", log=quiet)
    msgs: list[str] = []
    for cfg in (weak, sup):
        run_pipeline(cfg, run, start="train_seg", stop="eval_seg", log=msgs.append)
    assert msgs == [f"[skip] {s}: finished with this configuration"
                    for s in ("train_seg", "eval_seg", "train_seg_supervised", "eval_seg_supervised")]
    assert (run.path / "checkpoints" / "seg.safetensors").stat().st_mtime_ns == weak_ckpt
    assert {"seg.json", "seg_supervised.json"} <= {p.name for p in (run.path / "metrics").iterdir()}


def test_resumes_from_the_last_finished_epoch(dataset: Path, tmp_path: Path, monkeypatch, kill_after_epoch):
    cfg = make_cfg(dataset)
    run = RunDir(tmp_path / "run", cfg).init()
    fake_pseudo(cfg, run)
    kill_after_epoch(1, train_seg.run, cfg, run)
    assert run.status("train_seg")["state"] == "failed"
    first = json.loads((run.path / "logs" / "train_seg.jsonl").read_text().splitlines()[0])
    epochs_run: list[int] = []
    real_plan = train_seg.epoch_plan
    monkeypatch.setattr(train_seg, "epoch_plan", lambda *a, **k: epochs_run.append(a[5]) or real_plan(*a, **k))
    train_seg.run(cfg, run)
    assert epochs_run == [1]  # epoch 0 was not trained again
    log = [json.loads(x) for x in (run.path / "logs" / "train_seg.jsonl").read_text().splitlines()]
    assert len(log) == 2 and log[0] == first
    assert run.status("train_seg")["state"] == "done"


def test_a_resumed_network_with_dropout_is_the_uninterrupted_one(dataset: Path, tmp_path: Path, kill_after_epoch):
    """DeepLabV3+ has dropout: torch's draws come from each epoch's seed, so a resume after a kill gives the weights
    of a run never stopped (the U-Net, without dropout, never showed the difference)."""
    from safetensors.torch import load_file

    cfg = make_cfg(dataset, "train_seg.architecture=deeplabv3plus")
    straight = RunDir(tmp_path / "straight", cfg).init()
    fake_pseudo(cfg, straight)
    train_seg.run(cfg, straight)
    resumed = RunDir(tmp_path / "resumed", cfg).init()
    fake_pseudo(cfg, resumed)
    kill_after_epoch(1, train_seg.run, cfg, resumed)
    torch.manual_seed(12345)  # whatever the process drew meanwhile
    train_seg.run(cfg, resumed)
    a = load_file(str(straight.path / "checkpoints" / "seg.safetensors"))
    b = load_file(str(resumed.path / "checkpoints" / "seg.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_on_a_subset_of_the_training_images(dataset: Path, tmp_path: Path):
    """fit(samples=...) trains on exactly the given images (model selection on held-out patients)."""
    from histowsss.engine.distributed import init_distributed

    cfg = make_cfg(dataset, "train_seg.epochs=1")
    run = RunDir(tmp_path / "run", cfg).init()
    fake_pseudo(cfg, run)
    subset = samples_for(cfg, seg_labels.train_splits(cfg))[:3]
    ctx = init_distributed(cfg.device)
    meta, model = train_seg.fit(cfg, run, ctx, train_seg.config_hash(cfg), True, {}, samples=subset)
    assert meta["train_images"] == 3 and meta["label_source"] == "pseudo"
    ts = cfg.train_seg
    assert meta["final"]["crops"] == max(1, 3 * ts.crops_per_image // ts.batch_size) * ts.batch_size
    assert len(samples_for(cfg, seg_labels.train_splits(cfg))) > 3  # so the subset really is one
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, len(cfg.data.classes.names), 32, 32)


def test_one_run_gives_the_weak_network_and_its_upper_bound(dataset: Path, tmp_path: Path):
    """upper_bound: true adds train_seg_supervised / eval_seg_supervised to the same `histowsss run`."""
    cfg = make_cfg(dataset, "train_seg.epochs=1", "train_seg.labels=pseudo", "upper_bound=true")
    run = RunDir(tmp_path / "run", cfg).init()
    fake_pseudo(cfg, run)
    msgs: list[str] = []
    res = run_pipeline(cfg, run, start="train_seg", log=msgs.append)
    assert list(res) == ["train_seg", "eval_seg", "train_seg_supervised", "eval_seg_supervised"]
    weak = json.loads((run.path / "metrics" / "seg.json").read_text())
    sup = json.loads((run.path / "metrics" / "seg_supervised.json").read_text())
    assert weak["label_source"] == "pseudo" and sup["label_source"] == "ground_truth" and sup["supervised"]
    for s in ("train_seg", "eval_seg", "train_seg_supervised", "eval_seg_supervised"):
        assert run.status(s)["state"] == "done"
    # the same hash as training it by hand with --set train_seg.supervised=true
    by_hand = make_cfg(dataset, "train_seg.epochs=1", "train_seg.labels=pseudo", "train_seg.supervised=true")
    assert run.status("train_seg_supervised")["config_hash"] == train_seg.config_hash(by_hand)
    msgs.clear()
    run_pipeline(cfg, run, start="train_seg", log=msgs.append)
    assert len(msgs) == 4 and all(m.startswith("[skip]") for m in msgs)
    # without upper_bound the two steps are switched off, and say so
    off = make_cfg(dataset, "train_seg.epochs=1", "train_seg.labels=pseudo")
    msgs.clear()
    run_pipeline(off, run, start="train_seg", log=msgs.append)
    assert msgs[2:] == ["[off ] train_seg_supervised: upper_bound is false",
                        "[off ] eval_seg_supervised: upper_bound is false"]


def test_a_killed_overwrite_is_not_resumed_as_the_network_it_replaces(dataset: Path, tmp_path: Path, monkeypatch):
    """--overwrite, killed in its first epoch, then a plain re-run: the new network is trained, not the old one kept."""
    cfg = make_cfg(dataset)
    run = RunDir(tmp_path / "run", cfg).init()
    fake_pseudo(cfg, run)
    train_seg.run(cfg, run)
    ck = run.path / "checkpoints"

    def killed(*a, **k):
        raise KeyboardInterrupt("simulated kill in the first epoch")

    real_plan = train_seg.epoch_plan
    monkeypatch.setattr(train_seg, "epoch_plan", killed)
    with pytest.raises(KeyboardInterrupt):
        train_seg.run(cfg, run, overwrite=True)
    assert not (ck / "seg.safetensors").exists() and not (ck / "seg_train_state.pt").exists()
    plans: list[int] = []
    monkeypatch.setattr(train_seg, "epoch_plan", lambda *a, **k: plans.append(a[5]) or real_plan(*a, **k))
    train_seg.run(cfg, run)
    assert plans == list(range(cfg.train_seg.epochs))  # trained from the start, not resumed from the old run's state
    assert (ck / "seg.safetensors").exists() and run.status("train_seg")["state"] == "done"


def test_a_network_of_other_settings_stays_until_a_new_one_is_written_and_comes_back(dataset: Path, tmp_path: Path,
                                                                                      kill_after_epoch):
    """A run with other settings, stopped after its first epoch, leaves the finished network of before in place
    (predict still has one); going back to those settings restores train_seg instead of training it again."""
    from histowsss.engine.earlier_records import restore_kept_records

    cfg = make_cfg(dataset)
    run = RunDir(tmp_path / "run", cfg).init()
    fake_pseudo(cfg, run)
    train_seg.run(cfg, run)
    net = (run.path / "checkpoints" / "seg.safetensors").read_bytes()
    other = make_cfg(dataset, "train_seg.epochs=3")
    kill_after_epoch(1, train_seg.run, other, RunDir(run.path, other).init(), overwrite=True)
    assert run.status("train_seg")["state"] == "failed"
    assert (run.path / "checkpoints" / "seg.safetensors").read_bytes() == net
    assert restore_kept_records(cfg, RunDir(run.path, cfg).init(), log=lambda m: None) == ["train_seg"]
    assert run.is_done("train_seg", train_seg.config_hash(cfg))


def test_seed_ensemble_trains_members_resumes_after_a_kill_and_averages(dataset: Path, tmp_path: Path, monkeypatch):
    cfg = make_cfg(dataset, "train_seg.members=2")
    run = RunDir(tmp_path / "run", cfg).init()
    fake_pseudo(cfg, run)
    original = checkpoints.save_train_state
    seen: list[str] = []

    def crash_in_second_member(path, state):
        seen.append(Path(path).name)
        original(path, state)
        if Path(path).name.startswith("seg_m1"):
            raise KeyboardInterrupt("simulated interruption in member 2")

    monkeypatch.setattr(checkpoints, "save_train_state", crash_in_second_member)
    with pytest.raises(KeyboardInterrupt):
        train_seg.run(cfg, run)
    ck = run.path / "checkpoints"
    assert (ck / "seg.safetensors").exists() and not (ck / "seg_m1.safetensors").exists()
    first_member = (ck / "seg.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(checkpoints, "save_train_state", original)
    plans: list[tuple[int, int]] = []
    real_plan = train_seg.epoch_plan
    monkeypatch.setattr(train_seg, "epoch_plan", lambda *a, **k: plans.append((a[4], a[5])) or real_plan(*a, **k))
    train_seg.run(cfg, run)
    # the finished member is kept; the second resumes after its first epoch, with its own seed (seed + 1)
    assert plans == [(1, 1)] and (ck / "seg.safetensors").stat().st_mtime_ns == first_member
    meta0 = json.loads((ck / "seg.json").read_text())
    meta1 = json.loads((ck / "seg_m1.json").read_text())
    assert meta0["member_tags"] == ["seg", "seg_m1"] and (meta0["seed"], meta1["seed"]) == (0, 1)
    assert meta0["config_hash"] == meta1["config_hash"]
    a = (ck / "seg.safetensors").read_bytes()
    assert a != (ck / "seg_m1.safetensors").read_bytes()  # different seeds: different networks

    from histowsss.models.segnet import SegEnsemble

    model = segnet_io.load_segnet(cfg, run.path, "seg")
    assert isinstance(model, SegEnsemble) and len(model.members) == 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = torch.stack([torch.softmax(m(x), 1) for m in model.members]).mean(0)
        got = torch.softmax(model(x), 1)
    assert torch.allclose(got, want, atol=1e-5)
    run_pipeline(cfg, run, start="eval_seg", stop="eval_seg", log=lambda m: None)
    assert json.loads((run.path / "metrics" / "seg.json").read_text())["all"]["miou"] > 0
    # a member that went missing is a clear error, not a silently smaller ensemble
    (ck / "seg_m1.safetensors").unlink()
    with pytest.raises(StepError, match="seg_m1.*missing"):
        segnet_io.load_segnet(cfg, run.path, "seg")


def test_object_clean_up_relabels_the_saved_predictions(dataset: Path, tmp_path: Path):
    cfg = make_cfg(dataset)
    run = RunDir(tmp_path / "run", cfg).init()
    fake_pseudo(cfg, run, noise=0.3)
    run_pipeline(cfg, run, start="train_seg", stop="eval_seg", log=lambda m: None)
    raw = {s.name: np.asarray(Image.open(run.path / "pred" / f"{s.name}.png")) for s in samples_for(cfg, ["test"])}
    cleaned_cfg = make_cfg(dataset, "eval_seg.min_object_area=40", "eval_seg.max_hole_area=20")
    assert eval_seg.config_hash(cleaned_cfg) != eval_seg.config_hash(cfg)
    assert train_seg.config_hash(cleaned_cfg) == train_seg.config_hash(cfg)  # the network is not trained again
    m = eval_seg.run(cleaned_cfg, RunDir(run.path, cleaned_cfg), overwrite=True)
    assert m["inference"]["min_object_area"] == 40 and m["inference"]["max_hole_area"] == 20
    for name, lab in raw.items():
        new = np.asarray(Image.open(run.path / "pred" / f"{name}.png"))
        np.testing.assert_array_equal(new, clean_labels(lab, 0, min_object_area=40, max_hole_area=20))


def test_clean_up_areas_shrink_on_a_coarser_map(dataset: Path):
    cfg = make_cfg(dataset, "eval_seg.min_object_area=64")
    lab = np.zeros((16, 16), np.uint8)
    lab[2:4, 2:4] = 1     # 4 px: 64 network pixels at 4x coarser, not removed (not smaller than 64 / 16)
    lab[10, 10] = 1       # 1 px: removed
    out = eval_seg.clean_for(lab, cfg, pixel_factor=4)
    assert (out[2:4, 2:4] == 1).all() and out[10, 10] == 0
    assert (eval_seg.clean_for(lab, make_cfg(dataset)) == lab).all()


def test_cpu_amp_trains_in_bfloat16_on_the_cpu(dataset: Path, tmp_path: Path, monkeypatch, capsys):
    """train_seg.cpu_amp: the same seed and crops trained under bfloat16 autocast give other (finite) weights than
    float32; off by default, so finished float32 runs keep their hash; a CPU without bfloat16 instructions is named."""
    from histowsss.engine import device as device_mod
    from histowsss.engine.distributed import init_distributed

    monkeypatch.setattr(device_mod, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(device_mod, "_CHECKED", set())
    weights = {}
    for amp in (False, True):
        cfg = make_cfg(dataset, "train_seg.epochs=1", f"train_seg.cpu_amp={str(amp).lower()}")
        run = RunDir(tmp_path / f"run_{amp}", cfg).init()
        fake_pseudo(cfg, run)
        ctx = init_distributed(cfg.device)
        assert ctx.device.type == "cpu"
        meta, model = train_seg.fit(cfg, run, ctx, train_seg.config_hash(cfg), True, {})
        assert np.isfinite(meta["final"]["loss"])
        weights[amp] = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    assert torch.isfinite(weights[True]).all() and not torch.equal(weights[False], weights[True])
    assert capsys.readouterr().out.count("no bfloat16 instructions") == 1  # only the run with cpu_amp on
    assert train_seg.config_hash(make_cfg(dataset)) == train_seg.config_hash(make_cfg(dataset, "train_seg.cpu_amp=false"))


def test_eval_seg_cpu_amp_reaches_the_network_and_its_hash(dataset: Path):
    """eval_seg.cpu_amp: eval_seg's (and predict's) inference runs the network under bfloat16 autocast; being on
    changes eval_seg's hash (other numbers), being off keeps the hash of configs written before the option."""

    class Spy(torch.nn.Module):
        mean, std, size_divisor = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 32

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)
            self.autocast: list[bool] = []

        def forward(self, x):
            self.autocast.append(torch.is_autocast_enabled("cpu"))
            return self.conv(x)

    img = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    for on in (False, True):
        cfg = make_cfg(dataset, f"eval_seg.cpu_amp={str(on).lower()}", "eval_seg.tile_size=32")
        spy = Spy()
        probs = eval_seg.predict_probs(spy, img, cfg, torch.device("cpu"))
        assert probs.dtype == np.float32 and probs.shape == (2, 40, 48)
        assert spy.autocast and all(a == on for a in spy.autocast)
    assert eval_seg.config_hash(make_cfg(dataset)) == eval_seg.config_hash(make_cfg(dataset, "eval_seg.cpu_amp=false"))
    assert eval_seg.config_hash(make_cfg(dataset)) != eval_seg.config_hash(make_cfg(dataset, "eval_seg.cpu_amp=true"))


def test_train_seg_feeds_channels_last_crops_outside_the_hash(dataset: Path, tmp_path: Path, monkeypatch):
    """train_seg.channels_last: the network's weights and its crops are channels-last (faster convolutions; the
    crops alone already are, as views of stacked HWC arrays); a layout, so the config hash ignores it and a
    finished run stays valid either way."""
    from histowsss.engine.distributed import init_distributed
    from histowsss.models import segnet

    seen: list[bool] = []
    real = segnet.build_segnet

    def spying(ts, n):
        m = real(ts, n)
        conv = next(p for p in m.parameters() if p.dim() == 4)  # the stem's kernel
        m.register_forward_pre_hook(lambda mod, args: seen.append(
            args[0].is_contiguous(memory_format=torch.channels_last) and
            conv.is_contiguous(memory_format=torch.channels_last)))
        return m

    monkeypatch.setattr(segnet, "build_segnet", spying)
    for cl in (True, False):
        seen.clear()
        cfg = make_cfg(dataset, "train_seg.epochs=1", f"train_seg.channels_last={str(cl).lower()}")
        run = RunDir(tmp_path / f"run_{cl}", cfg).init()
        fake_pseudo(cfg, run)
        train_seg.fit(cfg, run, init_distributed(cfg.device), train_seg.config_hash(cfg), True, {})
        assert seen and all(s == cl for s in seen)
    assert train_seg.config_hash(make_cfg(dataset, "train_seg.channels_last=false")) == \
        train_seg.config_hash(make_cfg(dataset))


def test_a_network_trained_before_the_pseudo_masks_existed_is_trained_again(dataset: Path, tmp_path: Path,
                                                                             monkeypatch):
    """pseudo_or_cam / best_on_train decide from what the folder holds: a network trained on CAM labels (IRN not run
    yet) is trained again once the pseudo-masks exist, and its scores made again, though no hash changed."""
    cfg = make_cfg(dataset, "train_seg.labels=pseudo_or_cam")
    run = RunDir(tmp_path / "run", cfg).init()
    from histowsss.steps import eval_cam

    with run.step("eval_cam", eval_cam.config_hash(cfg)):  # CAM labels available, and still the choice
        pass
    with run.step("train_seg", train_seg.config_hash(cfg)) as info:  # as trained before IRN ran: on CAM labels
        info.update(label_source="cam")
    with run.step("eval_seg", eval_seg.config_hash(cfg)):
        pass
    assert seg_labels.label_source(cfg, run) == "cam" and train_seg.stale_reason(cfg, run) is None
    fake_pseudo(cfg, run)
    assert "trained on cam labels" in train_seg.stale_reason(cfg, run)
    calls: list[tuple[str, bool]] = []
    monkeypatch.setattr(train_seg, "run", lambda c, r, overwrite=False: calls.append(("train_seg", overwrite)))
    monkeypatch.setattr(eval_seg, "run", lambda c, r, overwrite=False: calls.append(("eval_seg", overwrite)))
    msgs: list[str] = []
    run_pipeline(cfg, run, start="train_seg", stop="train_seg", log=msgs.append)
    assert calls == [("train_seg", True)] and msgs[0].startswith("[redo] train_seg")
    # the network was trained after its scores were made: eval_seg is made again too (the pipeline's rule: a step
    # one reads finished after it started)
    from histowsss.engine.decisions import inputs_newer

    assert inputs_newer(cfg, run, eval_seg, "eval_seg") is None

    def backdate(key: str) -> None:
        st = json.loads((run.path / "status" / f"{key}.json").read_text())
        st["started"] = "2000-01-01T00:00:00+0000"
        (run.path / "status" / f"{key}.json").write_text(json.dumps(st))

    backdate("eval_seg")
    assert "train_seg was made again" in inputs_newer(cfg, run, eval_seg, "eval_seg")
    calls.clear()
    run_pipeline(cfg, run, start="eval_seg", stop="eval_seg", log=msgs.append)
    assert calls == [("eval_seg", True)] and any(m.startswith("[redo] eval_seg: train_seg was made again") for m in msgs)
    # the upper bound's scores follow its own network the same way
    from histowsss.steps import eval_seg_supervised, train_seg_supervised

    sup = train_seg_supervised.supervised_config(cfg)
    with run.step("train_seg_supervised", train_seg.config_hash(sup)):
        pass
    with run.step("eval_seg_supervised", eval_seg_supervised.config_hash(cfg)):
        pass
    assert inputs_newer(cfg, run, eval_seg_supervised, "eval_seg_supervised") is None
    backdate("eval_seg_supervised")
    assert "train_seg_supervised was made again" in inputs_newer(cfg, run, eval_seg_supervised, "eval_seg_supervised")


def test_dpt_on_a_frozen_foundation_model_resumes_evaluates_and_follows_its_file(dataset: Path, tmp_path: Path,
                                                                                  kill_after_epoch):
    import os

    import timm
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(0)
    fm = tmp_path / "fm.safetensors"  # a stand-in for a pathology foundation model's file (UNI: LayerScale)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=0, init_values=1e-5)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(fm))
    cfg = make_cfg(dataset, "train_seg.architecture=dpt", "train_seg.encoder=vit_tiny_patch16_224",
                   f"train_seg.encoder_weights={fm}", "train_seg.encoder_model_kwargs={init_values: 1e-5}",
                   "train_seg.encoder_mean=[0.485,0.456,0.406]", "train_seg.encoder_std=[0.229,0.224,0.225]",
                   "train_seg.freeze_encoder=true", "train_seg.decoder_channels=[16]")
    run = RunDir(tmp_path / "run", cfg).init()
    fake_pseudo(cfg, run)
    kill_after_epoch(1, train_seg.run, cfg, run)
    # the per-epoch resume point leaves out the frozen encoder (rebuilt from its file), the decoder is in it
    with safe_open(str(run.path / "checkpoints" / "seg_last.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert f.metadata()["skipped"] == "net.encoder."
    assert keys and not any(k.startswith("net.encoder.") for k in keys)
    train_seg.run(cfg, run)
    st = run.status("train_seg")
    assert st["state"] == "done" and st["encoder_weights"] == cfg.weights_file_digest("train_seg.encoder_weights")
    meta = json.loads((run.path / "checkpoints" / "seg.json").read_text())
    assert meta["architecture"] == "dpt" and meta["encoder_frozen"]
    assert meta["encoder_model_kwargs"] == {"init_values": 1e-5} and meta["mean"] == [0.485, 0.456, 0.406]
    # the encoder is in the final checkpoint as the file gave it: evaluation and predict need no file
    model = segnet_io.load_segnet(cfg, run.path, "seg")
    blocks = {k.removeprefix("net.encoder.model."): v for k, v in model.state_dict().items()
              if k.startswith("net.encoder.model.blocks.")}
    assert blocks and all(torch.equal(v, ref.state_dict()[k]) for k, v in blocks.items())
    os.rename(fm, tmp_path / "moved.safetensors")
    eval_seg.run(cfg, run)
    assert (run.path / "metrics" / "seg.json").exists()
    # the same file path with other weights: train_seg is made again
    ref2 = timm.create_model("vit_tiny_patch16_224", num_classes=0, init_values=1e-5)
    save_file({k: v.contiguous() for k, v in ref2.state_dict().items()}, str(fm))
    msgs: list[str] = []
    run_pipeline(cfg, run, start="train_seg", stop="train_seg", log=msgs.append)
    assert msgs[0] == "[redo] train_seg: the weights file (train_seg.encoder_weights) changed since it ran; made again"


def test_a_stopped_train_seg_starts_over_on_a_changed_encoder_file(dataset: Path, tmp_path: Path, monkeypatch,
                                                                   kill_after_epoch, capsys):
    """Even called directly (not through `histowsss run`, which plans the restart), a resume point trained on
    the file as it was is not continued with another file's frozen encoder; a missing file stops the run before
    any step."""
    import timm
    from safetensors.torch import save_file

    def write(seed: int) -> None:
        torch.manual_seed(seed)
        m = timm.create_model("test_efficientnet", features_only=True)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(enc))

    enc = tmp_path / "encoder.safetensors"
    write(0)
    cfg = make_cfg(dataset, f"train_seg.encoder_weights={enc}", "train_seg.freeze_encoder=true")
    run = RunDir(tmp_path / "run", cfg).init()
    fake_pseudo(cfg, run)
    kill_after_epoch(1, train_seg.run, cfg, run)
    write(1)
    epochs_run: list[int] = []
    real_plan = train_seg.epoch_plan
    monkeypatch.setattr(train_seg, "epoch_plan", lambda *a, **k: epochs_run.append(a[5]) or real_plan(*a, **k))
    capsys.readouterr()
    train_seg.run(cfg, run)
    assert epochs_run == [0, 1] and "trained on other weights" in capsys.readouterr().out
    gone = make_cfg(dataset, f"train_seg.encoder_weights={tmp_path / 'gone.safetensors'}")
    with pytest.raises(StepError, match="train_seg.encoder_weights is not a file .* train_seg builds its network"):
        run_pipeline(gone, RunDir(tmp_path / "run2", gone).init(), log=lambda m: None)
    assert not (tmp_path / "run2" / "status" / "train_cam.json").exists()  # nothing ran
    # the network train_seg would build, and whether its file fits it, are checked before any step too
    vit = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("vit_tiny_patch16_224", num_classes=0,
                                                               init_values=1e-5).state_dict().items()}, str(vit))
    dpt = ["train_seg.architecture=dpt", f"train_seg.encoder_weights={vit}", "train_seg.encoder_mean=[0.5,0.5,0.5]",
           "train_seg.encoder_std=[0.2,0.2,0.2]", "train_seg.decoder_channels=[16]"]
    for extra, why in [(["train_seg.encoder=vit_tiny_patch16_224"], r"init_values: 1.0e-5"),  # card's kwargs left out
                       (["train_seg.encoder=test_efficientnet"], "is a timm efficientnet model")]:
        bad = make_cfg(dataset, *dpt, *extra)
        with pytest.raises(StepError, match="train_seg could not build its network: .*" + why):
            run_pipeline(bad, RunDir(tmp_path / "run3", bad).init(), log=lambda m: None)
        assert not (tmp_path / "run3" / "status" / "train_cam.json").exists()


def test_gradient_checkpointing_reaches_the_trained_encoder(dataset: Path, tmp_path: Path):
    from histowsss.engine.distributed import init_distributed

    cfg = make_cfg(dataset, "train_seg.epochs=1", "train_seg.grad_checkpointing=true")
    run = RunDir(tmp_path / "run", cfg).init()
    fake_pseudo(cfg, run)
    subset = samples_for(cfg, seg_labels.train_splits(cfg))[:2]
    _, model = train_seg.fit(cfg, run, init_distributed(cfg.device), train_seg.config_hash(cfg), True, {},
                             samples=subset)
    assert model.net.encoder.model.grad_checkpointing
