"""engine/pipeline: a step whose inputs are missing or of other settings is refused before anything is written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from histowsss.config import load_config
from histowsss.engine.pipeline import plan_steps
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.steps import cam_to_ir_label, eval_cam, make_sem_seg_labels, train_irn


def test_from_a_step_whose_inputs_are_missing_is_refused_before_the_folder_changes(tmp_path):
    from typer.testing import CliRunner

    from histowsss.cli.app import app

    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", "demo", "--run", str(run), "--from", "train_irn", "--to", "train_irn"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "train_irn needs the outputs of cam_to_ir_label, which has not finished" in out
    assert "start from train_cam, which it needs in turn" in out  # the first step missing, and the --to given:
    assert f"`histowsss run demo --run {run} --from train_cam --to train_irn`" in out  # a command that runs as given
    assert not run.exists() or not any(run.iterdir())  # no config.yaml, no status record
    r = CliRunner().invoke(app, ["run", "demo", "--run", str(run), "--from", "train_irn", "--set", "train_cam.epochs=3",
                                 "-s", "seed=1 "])  # the same settings, --set included
    out = " ".join(r.output.split())
    assert f"`histowsss run demo --set train_cam.epochs=3 --set 'seed=1 ' --run {run} --from train_cam`" in out


def test_inputs_of_other_settings_are_named_and_a_finished_step_keeps_its_record(tmp_path, demo_data):
    cfg = load_config("demo")
    rd = RunDir(tmp_path / "run", cfg).init()
    for step, mod in (("cam_to_ir_label", cam_to_ir_label), ("train_irn", train_irn)):
        with rd.step(step, mod.config_hash(cfg)):
            pass
    other = load_config("demo", ["train_cam.epochs=3"])
    with pytest.raises(StepError, match=r"cam_to_ir_label, which finished with other settings \(train_cam.epochs = "
                                        r"8 \(now 3\)\)"):
        plan_steps(other, RunDir(rd.path, other), "train_irn", "train_irn")
    assert json.loads((rd.path / "status" / "train_irn.json").read_text())["state"] == "done"
    # the same settings plan fine; an earlier start covers the missing input
    assert [p[0] for p in plan_steps(cfg, rd, "train_irn", "train_irn")] == ["train_irn"]
    with pytest.raises(StepError, match="cam_to_ir_label needs the outputs of make_cam"):  # back one step: still
        plan_steps(other, RunDir(rd.path, other), "cam_to_ir_label", "train_irn")
    assert len(plan_steps(other, RunDir(rd.path, other), None, "train_irn")) == 5  # from the start: all scheduled


def test_a_step_made_again_makes_the_steps_reading_it_stale(tmp_path, monkeypatch, demo_data):
    """make_cam redone (--overwrite, same settings) after eval_cam scored its CAMs: eval_cam is redone too."""
    from histowsss.engine.decisions import inputs_newer
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.steps import eval_cam, make_cam

    cfg = load_config("demo")
    rd = RunDir(tmp_path / "run", cfg).init()
    for step, mod in (("make_cam", make_cam), ("eval_cam", eval_cam)):
        with rd.step(step, mod.config_hash(cfg)):
            pass
    assert inputs_newer(cfg, rd, eval_cam, "eval_cam") is None
    st = json.loads((rd.path / "status" / "eval_cam.json").read_text())
    st["started"] = "2000-01-01T00:00:00+0000"  # as if make_cam finished again after eval_cam ran
    (rd.path / "status" / "eval_cam.json").write_text(json.dumps(st))
    msgs: list[str] = []
    ran: list[bool] = []
    monkeypatch.setattr(eval_cam, "run", lambda c, r, overwrite=False: ran.append(overwrite))
    run_pipeline(cfg, rd, "eval_cam", "eval_cam", log=msgs.append)
    assert ran == [True] and msgs[0].startswith("[redo] eval_cam: make_cam was made again")


@pytest.mark.parametrize("labels", ["pseudo_or_cam", "best_on_train"])
def test_a_label_source_decided_at_run_time_needs_one_of_its_inputs(tmp_path, labels, demo_data):
    """pseudo_or_cam / best_on_train train on IRN's pseudo-masks or eval_cam's CAM labels: --from train_seg is refused
    when neither finished, and planned when either did."""
    cfg = load_config("demo", [f"train_seg.labels={labels}"])
    rd = RunDir(tmp_path / "run", cfg).init()
    with pytest.raises(StepError, match=r"train_seg needs the outputs of eval_cam or make_sem_seg_labels \(eval_cam "
                                        r"has not finished; make_sem_seg_labels has not finished\).*start from "
                                        r"train_cam: .*--from train_cam --to train_seg"):
        plan_steps(cfg, rd, "train_seg", "train_seg")
    assert len(plan_steps(cfg, rd, None, "train_seg")) == 9  # from the start: scheduled
    with rd.step("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg)):
        pass
    assert [p[0] for p in plan_steps(cfg, rd, "train_seg", "train_seg")] == ["train_seg"]
    other = tmp_path / "other"
    rd2 = RunDir(other, cfg).init()
    from histowsss.steps import make_cam

    for step, mod in (("make_cam", make_cam), ("eval_cam", eval_cam)):  # (CAM labels: eval_cam's choice on the CAMs)
        with rd2.step(step, mod.config_hash(cfg)):
            pass
    assert [p[0] for p in plan_steps(cfg, rd2, "train_seg", "train_seg")] == ["train_seg"]
    # IRN's pseudo-masks are in the folder, of other settings: --from train_seg would quietly train on CAM labels
    irn_other = load_config("demo", [f"train_seg.labels={labels}", "train_irn.epochs=1"])
    with RunDir(other, irn_other).init().step("make_sem_seg_labels", make_sem_seg_labels.config_hash(irn_other)):
        pass
    with pytest.raises(StepError, match=r"train_seg \(train_seg.labels=\w+\) would not read make_sem_seg_labels, "
                                        r"which finished with other settings \(train_irn.epochs = 1 \(now 3\)\) .*"
                                        r"would train on the CAM labels instead .*start from cam_to_ir_label: "
                                        r".*--from cam_to_ir_label --to train_seg"):
        plan_steps(cfg, RunDir(other, cfg), "train_seg", "train_seg")
    cam = load_config("demo", ["train_seg.labels=cam"])  # said so: CAM labels
    assert [p[0] for p in plan_steps(cam, RunDir(other, cam), "train_seg", "train_seg")] == ["train_seg"]
    # best_on_train: eval_sem_seg's scores choose; of other settings, it would not choose
    from histowsss.steps import eval_sem_seg

    with RunDir(other, cfg).init().step("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg), overwrite=True):
        pass
    with RunDir(other, irn_other).init().step("eval_sem_seg", eval_sem_seg.config_hash(irn_other)):
        pass
    if labels == "best_on_train":
        with pytest.raises(StepError, match=r"would not read eval_sem_seg, which finished with other .* would not "
                                            r"compare IRN's pseudo-masks with the CAM labels"):
            plan_steps(cfg, RunDir(other, cfg), "train_seg", "train_seg")
    else:
        assert [p[0] for p in plan_steps(cfg, RunDir(other, cfg), "train_seg", "train_seg")] == ["train_seg"]


def test_the_upper_bound_hash_leaves_out_the_weak_label_settings():
    """Changing how the weak labels are made or weighed does not train the supervised network again."""
    from histowsss.steps import eval_seg_supervised, train_seg, train_seg_supervised

    base = load_config("glas-gland")
    for over in ("train_seg.labels=cam", "train_seg.loss=gce", "train_seg.boundary_ignore=4",
                 "train_seg.patch_veto=true", "train_seg.loss_warmup_epochs=3", "points.radius=9"):
        other = load_config("glas-gland", [over])
        assert train_seg_supervised.config_hash(other) == train_seg_supervised.config_hash(base), over
        assert eval_seg_supervised.config_hash(other) == eval_seg_supervised.config_hash(base), over
        if over.startswith("train_seg"):
            assert train_seg.config_hash(other) != train_seg.config_hash(base), over  # the weak network: redone
    for over in ("train_seg.epochs=3", "train_seg.crop_size=224", "data.image_scale=0.5"):
        other = load_config("glas-gland", [over])
        assert train_seg_supervised.config_hash(other) != train_seg_supervised.config_hash(base), over


def test_an_upper_bound_recorded_under_the_earlier_hash_rule_is_kept(tmp_path, demo_data):
    """A run folder of an earlier version (the supervised hash over every train_seg setting) keeps its finished upper
    bound: records and checkpoint metadata are relabelled, nothing is retrained; other settings are not adopted."""
    from histowsss.engine.atomic import write_json
    from histowsss.engine.earlier_records import adopt_legacy_records
    from histowsss.steps import eval_seg_supervised, train_seg_supervised

    cfg = load_config("demo", ["upper_bound=true"])
    rd = RunDir(tmp_path / "run", cfg).init()
    old_train = train_seg_supervised.legacy_config_hashes(cfg)[0]
    old_eval = eval_seg_supervised.legacy_config_hashes(cfg)[0]
    assert old_train != train_seg_supervised.config_hash(cfg)
    with rd.step("train_seg_supervised", old_train):
        pass
    with rd.step("eval_seg_supervised", old_eval):
        pass
    ck = rd.sub("checkpoints")
    write_json(ck / "seg_supervised.json", {"config_hash": old_train, "member_tags": ["seg_supervised",
                                                                                      "seg_supervised_m1"]})
    write_json(ck / "seg_supervised_m1.json", {"config_hash": old_train})
    # --from a step reading the old record is planned (not refused) before anything is relabelled
    assert [p[0] for p in plan_steps(cfg, rd, "eval_seg_supervised", "eval_seg_supervised")] == \
        ["eval_seg_supervised"]
    other = load_config("demo", ["upper_bound=true", "train_seg.epochs=2"])
    assert adopt_legacy_records(other, RunDir(rd.path, other), log=lambda m: None) == []  # other settings: not ours
    # the first run after the upgrade changes a weak-label setting (what the narrower hash is for): kept all the same,
    # the earlier rule applied to the config the record ran with; a torchrun rank other than 0 takes it as finished
    weak = load_config("demo", ["upper_bound=true", "train_seg.loss=gce"])
    from histowsss.engine.earlier_records import legacy_match

    assert legacy_match(weak, RunDir(rd.path, weak), "train_seg_supervised", train_seg_supervised) == old_train
    logs = []
    assert adopt_legacy_records(weak, RunDir(rd.path, weak), log=logs.append) == ["train_seg_supervised",
                                                                                  "eval_seg_supervised"]
    assert "[keep] train_seg_supervised" in logs[0]
    assert rd.is_done("train_seg_supervised", train_seg_supervised.config_hash(cfg))
    assert rd.is_done("eval_seg_supervised", eval_seg_supervised.config_hash(cfg))
    for f in ("seg_supervised.json", "seg_supervised_m1.json"):
        assert json.loads((ck / f).read_text())["config_hash"] == train_seg_supervised.config_hash(cfg)
    assert adopt_legacy_records(cfg, rd, log=logs.append) == []  # once


def test_a_step_made_again_says_why(tmp_path, monkeypatch, demo_data):
    """A finished step run again is named with the settings that changed (not a bare [run ]), and a step that
    stopped says it goes on."""
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.steps import train_cam

    cfg = load_config("demo")
    rd = RunDir(tmp_path / "run", cfg).init()
    with rd.step("train_cam", train_cam.config_hash(cfg)):
        pass
    monkeypatch.setattr(train_cam, "run", lambda c, r, overwrite=False: {})
    other = load_config("demo", ["train_cam.epochs=3"])
    logs = []
    run_pipeline(other, RunDir(rd.path, other).init(), "train_cam", "train_cam", log=logs.append)
    assert logs[0] == "[redo] train_cam: finished with other settings (train_cam.epochs = 8 (now 3)); made again"
    rec = json.loads(rd.status_path("train_cam").read_text())
    for made_with, said in ((cfg, "[run ] train_cam: starts over (it had stopped with other settings: train_cam.epochs "
                                  "= 8 (now 3))"),
                            (other, "[run ] train_cam: goes on from where it stopped (failed at ")):
        rd.status_path("train_cam").write_text(json.dumps({**rec, "state": "failed",
                                                           "config_hash": train_cam.config_hash(made_with)}))
        logs.clear()
        run_pipeline(other, RunDir(rd.path, other).init(), "train_cam", "train_cam", log=logs.append)
        assert logs[0].startswith(said), logs[0]
    rd.status_path("train_cam").write_text(json.dumps({**rec, "state": "failed"}))
    logs.clear()
    run_pipeline(other, RunDir(rd.path, other).init(), "train_cam", "train_cam", overwrite=True, log=logs.append)
    assert logs[0] == "[run ] train_cam: starts over (--overwrite; it had stopped, failed)"


def test_ctrl_c_says_how_to_go_on(tmp_path, monkeypatch, demo_data):
    from typer.testing import CliRunner

    from histowsss.cli.app import app
    from histowsss.steps import train_cam

    def interrupted(cfg, run, overwrite=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cam, "run", interrupted)
    r = CliRunner().invoke(app, ["run", "demo", "--run", str(tmp_path / "run"), "--to", "train_cam"])
    assert r.exit_code == 130 and "run the same command again to go on" in " ".join(r.output.split())


def test_a_network_whose_fallback_labels_were_made_again_is_stale(tmp_path):
    """pseudo_or_cam trained on eval_cam's CAM labels (no pseudo-masks yet): eval_cam made again afterwards makes it
    stale (requires_any alone cannot say which of its inputs it read)."""
    from histowsss.steps import train_seg

    cfg = load_config("demo", ["train_seg.labels=pseudo_or_cam"])
    rd = RunDir(tmp_path / "run", cfg).init()
    rd.status_path("eval_cam").parent.mkdir(parents=True, exist_ok=True)
    rec = {"state": "done", "config_hash": eval_cam.config_hash(cfg), "started": "2026-01-01T10:00:00+0000",
           "finished": "2026-01-01T10:01:00+0000"}
    rd.status_path("eval_cam").write_text(json.dumps(rec))
    seg = {"state": "done", "config_hash": train_seg.config_hash(cfg), "label_source": "cam",
           "started": "2026-01-01T11:00:00+0000", "finished": "2026-01-01T12:00:00+0000"}
    rd.status_path("train_seg").write_text(json.dumps(seg))
    assert train_seg.stale_reason(cfg, rd) is None
    rd.status_path("eval_cam").write_text(json.dumps({**rec, "finished": "2026-01-01T13:00:00+0000"}))
    assert train_seg.stale_reason(cfg, rd) == "its cam labels (eval_cam) were made again after it was trained"


def test_a_dry_run_says_what_would_run_and_why_and_writes_nothing(tmp_path, monkeypatch, demo_data):
    """`histowsss run --dry-run`: the plan of a real run (skip / redo / run, with reasons; a finished step after one
    that would run is made again), the checks before any step included, and no file written."""
    from typer.testing import CliRunner

    from histowsss.cli.app import app
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.steps import make_cam, train_cam

    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", "demo", "--run", str(run), "--to", "eval_cam", "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = [" ".join(x.split()) for x in r.output.splitlines()]
    assert "[run ] train_cam" in lines and "[run ] eval_cam" in lines
    assert any(x.startswith("dry run: 3 step(s) would run (train_cam, make_cam, eval_cam)") for x in lines)
    assert not run.exists()  # not even the folder
    cfg = load_config("demo")
    rd = RunDir(run, cfg).init()
    for step, mod in (("train_cam", train_cam), ("make_cam", make_cam), ("eval_cam", eval_cam)):
        with rd.step(step, mod.config_hash(cfg)):
            pass
    made = sorted(p.relative_to(run) for p in run.rglob("*"))
    for mod in (train_cam, make_cam, eval_cam):  # a dry run never calls a step
        monkeypatch.setattr(mod, "run", lambda *a, **k: pytest.fail("a step ran in a dry run"))
    logs: list[str] = []
    assert run_pipeline(cfg, rd, None, "eval_cam", log=logs.append, dry_run=True) == {}
    assert logs[:3] == ["[skip] train_cam: finished with this configuration",
                        "[skip] make_cam: finished with this configuration",
                        "[skip] eval_cam: finished with this configuration"]
    other = load_config("demo", ["train_cam.epochs=3"])  # every step after it has other settings too
    logs.clear()
    assert list(run_pipeline(other, RunDir(run, other), None, "eval_cam", log=logs.append, dry_run=True)) == [
        "train_cam", "make_cam", "eval_cam"]
    assert logs[0].startswith("[redo] train_cam: finished with other settings (train_cam.epochs = 8 (now 3))")
    # a finished step after one that would run (a stopped make_cam, the same settings) is made again
    rec = json.loads(rd.status_path("make_cam").read_text())
    rd.status_path("make_cam").write_text(json.dumps({**rec, "state": "failed"}))
    made = sorted(p.relative_to(run) for p in run.rglob("*"))
    logs.clear()
    assert list(run_pipeline(cfg, rd, None, "eval_cam", log=logs.append, dry_run=True)) == ["make_cam", "eval_cam"]
    assert logs[1].startswith("[run ] make_cam: goes on from where it stopped (failed at")
    assert logs[2] == "[redo] eval_cam: make_cam runs before it, so it would be made again"
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == made
    # the checks made before any step run in a dry run too
    r = CliRunner().invoke(app, ["run", "demo", "--run", str(tmp_path / "run2"), "--dry-run", "--set",
                                 f"train_seg.encoder_weights={tmp_path / 'gone.safetensors'}"])
    assert r.exit_code != 0 and "train_seg.encoder_weights is not a file" in " ".join(r.output.split())


def test_the_cam_backbone_is_built_on_the_meta_device_before_any_step(tmp_path, monkeypatch, demo_data):
    """A backbone train_cam could not build, or whose weights file does not fit it, stops the run before any step
    (not when train_cam starts); a step already finished with it is not checked again."""
    import timm
    import torch
    from safetensors.torch import save_file

    from histowsss.engine.pipeline import run_pipeline
    from histowsss.steps import train_cam

    monkeypatch.chdir(tmp_path)
    vit = tmp_path / "vit.safetensors"
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in timm.create_model("vit_tiny_patch16_224", num_classes=0)
               .state_dict().items()}, str(vit))
    base = ["backbone.name=vit_tiny_patch16_224", f"backbone.weights={vit}", "backbone.frozen_stages=0"]
    for extra, why in [([], "set backbone.mean and backbone.std"),
                       (["backbone.mean=[0.5,0.5,0.5]", "backbone.std=[0.2,0.2,0.2]",
                         "backbone.name=vit_small_patch16_224"], "another architecture"),
                       (["backbone.mean=[0.5,0.5,0.5]", "backbone.std=[0.2,0.2,0.2]", "backbone.frozen_stages=2"],
                        "frozen whole")]:
        cfg = load_config("demo", [*base, *extra])
        rd = RunDir(tmp_path / "run", cfg).init()
        monkeypatch.setattr(train_cam, "run", lambda *a, **k: pytest.fail("train_cam ran"))
        with pytest.raises(StepError, match="train_cam could not build its network: .*" + why):
            run_pipeline(cfg, rd, None, "eval_cam", log=lambda m: None)
    good = load_config("demo", [*base, "backbone.mean=[0.5,0.5,0.5]", "backbone.std=[0.2,0.2,0.2]"])
    rd = RunDir(tmp_path / "run", good)
    from histowsss.engine import preflight

    built: list[str] = []
    real = preflight._check_network
    monkeypatch.setattr(preflight, "_check_network", lambda c, k, s: built.append(k) or real(c, k, s))
    plan_steps(good, rd, None, "make_sem_seg_labels")  # (which checks the inputs)
    assert built == ["train_cam"]  # once for the three steps that build the backbone
    with rd.step("train_cam", train_cam.config_hash(good)):
        pass
    built.clear()
    plan_steps(good, rd, "make_cam", "eval_cam")
    assert built == []  # nothing ahead builds the backbone from its file


def test_a_step_made_again_names_only_the_settings_it_reads(tmp_path, monkeypatch, demo_data):
    """Changed settings of later steps (eval_seg's) are not given as why train_cam runs again."""
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.steps import train_cam

    cfg = load_config("demo")
    rd = RunDir(tmp_path / "run", cfg).init()
    with rd.step("train_cam", train_cam.config_hash(cfg)):
        pass
    monkeypatch.setattr(train_cam, "run", lambda c, r, overwrite=False: {})
    other = load_config("demo", ["train_cam.epochs=3", "eval_seg.min_object_area=77", "train_seg.epochs=2"])
    logs = []
    run_pipeline(other, RunDir(rd.path, other).init(), "train_cam", "train_cam", log=logs.append)
    assert logs[0] == "[redo] train_cam: finished with other settings (train_cam.epochs = 8 (now 3)); made again"
    assert "eval_seg" in RunDir(rd.path, other).settings_diff(rd.status("train_cam"))  # without the step: all


def test_manifest_problems_stop_the_run_before_any_step(builder, tmp_path):
    """A duplicate image row, and the upper bound over training images without masks, are found before the first
    step, not after it (a dry run says so too)."""
    from histowsss.data.manifest import ManifestError
    from histowsss.engine.pipeline import run_pipeline

    rows = [builder.row(f"i{k}", "test" if k > 5 else "train", label="malignant" if k % 2 else "benign",
                        mask=k != 1) for k in range(8)]
    rows[1]["mask"] = ""
    m = builder.manifest(rows + [dict(rows[7], split="train")])
    over = [f"data.manifest={m}", "data.label_column=label", "data.val_splits=[]", "upper_bound=true"]
    cfg = load_config("demo", over)
    rd = RunDir(tmp_path / "run", cfg)
    with pytest.raises(ManifestError, match="found before any step ran:\n  row 10 .*the same image file as row 9"):
        run_pipeline(cfg, rd, dry_run=True, log=lambda s: None)
    m = builder.manifest(rows, name="ok.csv")
    cfg = load_config("demo", over[1:] + [f"data.manifest={m}"])
    with pytest.raises(StepError, match=r"upper_bound\) needs a mask for every training image; 1 of 6 have none "
                                        r"\(e.g. i1\)"):
        run_pipeline(cfg, RunDir(tmp_path / "run", cfg), dry_run=True, log=lambda s: None)
    cfg = load_config("demo", over[1:-1] + [f"data.manifest={m}"])  # no upper bound: nothing to refuse
    logs: list[str] = []
    run_pipeline(cfg, RunDir(tmp_path / "run", cfg), dry_run=True, log=logs.append)
    assert logs[-1].startswith("dry run: ")


def test_a_dry_run_says_a_best_on_train_network_may_be_made_again_when_its_label_step_runs(tmp_path, monkeypatch,
                                                                                          demo_data):
    """train_seg with labels decided at run time (best_on_train) has no fixed input: a dry run in which eval_cam
    (a label source) runs again says train_seg may be made again, as the real run would find."""
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.steps import train_seg

    cfg = load_config("demo")
    assert cfg.train_seg.labels == "best_on_train"
    from histowsss.steps import make_cam, train_cam

    rd = RunDir(tmp_path / "run", cfg).init()
    for step, mod in (("train_cam", train_cam), ("make_cam", make_cam), ("train_seg", train_seg)):
        with rd.step(step, mod.config_hash(cfg)):
            pass  # eval_cam and the IRN steps have not finished: they would run
    monkeypatch.setattr(train_seg, "stale_reason", lambda c, r: None)  # (what the files say now: nothing)
    logs: list[str] = []
    run_pipeline(cfg, rd, "eval_cam", "train_seg", log=logs.append, dry_run=True)
    line = next(x for x in logs if "train_seg" in x)
    assert line.startswith("[redo] train_seg: eval_cam and make_sem_seg_labels and eval_sem_seg run(s) before it, "
                           "and it would be made again if the labels it reads or picks change")


def test_a_manifest_that_is_not_there_stops_the_run_before_any_step(tmp_path, monkeypatch):
    """A project moved (the config's relative manifest path read from another folder): named before any step, not
    at the first step that reads it; a run whose steps are all done needs no manifest."""
    from typer.testing import CliRunner

    from histowsss.cli.app import app

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["run", "demo", "--run", "run", "--set", "data.manifest=moved/manifest.csv"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "moved/manifest.csv: the manifest (data.manifest) is not a file" in out
    assert f"read from the current folder, {tmp_path}" in out and "train_cam and the steps after it" in out
    assert not (tmp_path / "run").exists()
    r = CliRunner().invoke(app, ["run", "demo", "--run", "run", "--to", "train_cam"])
    assert r.exit_code == 2 and "`histowsss demo` writes the demo's data" in " ".join(r.output.split())
    (tmp_path / "proj").mkdir()  # a run folder started elsewhere: that folder is named
    monkeypatch.chdir(tmp_path / "proj")
    RunDir(tmp_path / "proj" / "run", load_config("demo", ["data.manifest=data/m.csv"])).init()
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["run", "proj/run/config.yaml"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and f"({tmp_path / 'proj'}: this run folder's last `histowsss run` started there)" in out
    monkeypatch.chdir(tmp_path / "proj")  # started there: not said
    r = CliRunner().invoke(app, ["run", "run/config.yaml"])
    assert r.exit_code == 2 and "started there" not in r.output and "data/m.csv: the manifest" in r.output
    from histowsss.steps import train_cam

    cfg = load_config("demo")
    rd = RunDir(tmp_path / "run", cfg).init()
    with rd.step("train_cam", train_cam.config_hash(cfg)):
        pass
    assert [p[0] for p in plan_steps(cfg, rd, None, "train_cam")] == ["train_cam"]  # done: nothing reads the manifest


def test_outputs_that_do_not_follow_from_the_settings_of_now_are_named_with_the_step_they_came_from(tmp_path,
                                                                                                     demo_data):
    """What the report and the closing table mark stale: other settings (config.yaml rewritten by a run that stopped
    before making them again), a step that did not finish (a stopped --overwrite), an input made again after it."""
    from histowsss.engine.standing import metrics_standing, steps_standing
    from histowsss.steps import make_cam, train_cam

    cfg = load_config("demo")
    rd = RunDir(tmp_path / "run", cfg).init()
    for step, mod in (("train_cam", train_cam), ("make_cam", make_cam), ("eval_cam", eval_cam),
                      ("cam_to_ir_label", cam_to_ir_label)):
        with rd.step(step, mod.config_hash(cfg)):
            pass
    (rd.path / "metrics").mkdir()
    (rd.path / "metrics" / "cam.json").write_text("{}")
    standing = steps_standing(cfg, rd)
    assert [standing[s] for s in ("train_cam", "make_cam", "eval_cam", "cam_to_ir_label")] == [None] * 4
    assert standing["train_irn"] == "has not run" and metrics_standing(cfg, rd.path) == {}
    other = load_config("demo", ["train_cam.epochs=3"])
    assert metrics_standing(other, rd.path) == {
        "cam": "eval_cam: finished with other settings (train_cam.epochs = 8 (now 3))"}
    # make_cam made again with --overwrite and stopped: what was made from its CAMs does not stand
    st = json.loads(rd.status_path("make_cam").read_text())
    rd.status_path("make_cam").write_text(json.dumps({**st, "state": "failed", "finished": None}))
    standing = steps_standing(cfg, rd)
    assert standing["make_cam"].startswith("did not finish (failed, started ")
    assert standing["eval_cam"].startswith("made from make_cam's outputs, which do not stand (make_cam: did not ")
    assert standing["cam_to_ir_label"].startswith("made from make_cam's outputs")
    assert metrics_standing(cfg, rd.path)["cam"].startswith("eval_cam: made from make_cam's outputs")
    # make_cam finished again after eval_cam ran
    rd.status_path("make_cam").write_text(json.dumps(st))
    ev = json.loads(rd.status_path("eval_cam").read_text())
    rd.status_path("eval_cam").write_text(json.dumps({**ev, "started": "2000-01-01T00:00:00+0000"}))
    assert steps_standing(cfg, rd)["eval_cam"].startswith("make_cam was made again at ")
    assert steps_standing(cfg, rd)["cam_to_ir_label"] is None


def test_going_back_to_the_settings_of_before_keeps_a_step_a_stopped_run_did_not_rewrite(tmp_path, monkeypatch):
    """A run with other settings (train_cam.epochs=2) stopped in train_cam after an epoch: its network of before is
    still there, so going back keeps it (and every later step) instead of making them again; a run stopped after
    rewriting it does not."""
    from histowsss.data.synthetic import generate_synthetic_dataset
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.steps import train_cam

    manifest = generate_synthetic_dataset(tmp_path / "data", {"train": 4, "val": 0, "test": 2}, size=64)
    fast = [f"data.manifest={manifest}", "train_cam.epochs=1", "train_cam.crop_size=48", "train_cam.crops_per_image=2",
            "train_cam.cache_copies=1", "train_cam.head_channels=16", "make_cam.scales=[1.0]"]
    a = load_config("demo", fast)
    run = RunDir(tmp_path / "run", a).init()
    run_pipeline(a, run, stop="eval_cam", log=lambda m: None)
    net = (run.path / "checkpoints" / "cam.safetensors").read_bytes()
    log_a = (run.path / "logs" / "train_cam.jsonl").read_text()
    from histowsss.engine import checkpoints

    real = checkpoints.save_resume_point

    def stopped(*args, **kw):
        real(*args, **kw)
        raise KeyboardInterrupt  # Ctrl-C after the first epoch of two

    monkeypatch.setattr(checkpoints, "save_resume_point", stopped)  # (train_cam imports it as it runs)
    b = load_config("demo", [*fast, "train_cam.epochs=2"])
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(b, RunDir(run.path, b).init(), stop="eval_cam", log=lambda m: None)
    assert json.loads(run.status_path("train_cam").read_text())["state"] == "failed"
    assert (run.path / "logs" / "train_cam.jsonl").read_text() != log_a  # the stopped run's epoch
    monkeypatch.setattr(checkpoints, "save_resume_point", real)
    logs: list[str] = []
    run_pipeline(a, RunDir(run.path, a), stop="eval_cam", log=logs.append, dry_run=True)
    assert logs[0].startswith("[keep] train_cam: finished with these settings at ")
    assert logs[0].endswith("its record would be restored") and "dry run: 0 step" in logs[-1], logs
    assert json.loads(run.status_path("train_cam").read_text())["state"] == "failed"  # (a dry run writes nothing)
    logs.clear()
    run_pipeline(a, RunDir(run.path, a).init(), stop="eval_cam", log=logs.append)
    assert logs[0].endswith("its record is restored") and len(logs) == 4, logs
    assert all(m.startswith("[skip]") for m in logs[1:])
    st = json.loads(run.status_path("train_cam").read_text())
    assert st["state"] == "done" and st["config_hash"] == train_cam.config_hash(a) and "restored" in st
    assert (run.path / "checkpoints" / "cam.safetensors").read_bytes() == net
    assert (run.path / "logs" / "train_cam.jsonl").read_text() == log_a  # the report's curves are its own again
    # B finished: its network replaced this one, so going back to A trains again
    run_pipeline(b, RunDir(run.path, b).init(), stop="train_cam", log=lambda m: None)
    logs.clear()
    run_pipeline(a, RunDir(run.path, a), stop="train_cam", log=logs.append, dry_run=True)
    assert logs[0].startswith("[redo] train_cam: finished with other settings (train_cam.epochs = 2 (now 1))")


def test_a_kept_record_whose_input_is_made_again_first_is_not_kept(tmp_path, demo_data):
    """A run with other CAM settings finished train_cam and stopped as make_cam began (no CAM rewritten): going
    back, make_cam's kept record has unchanged outputs, but train_cam runs first, so make_cam is made again too."""
    from histowsss.engine.earlier_records import restore_kept_records
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.standing import steps_standing
    from histowsss.steps import make_cam, train_cam

    a, b = load_config("demo"), load_config("demo", ["train_cam.epochs=3"])
    rd = RunDir(tmp_path / "run", a).init()
    for step, mod, file in (("train_cam", train_cam, "cam.safetensors"), ("make_cam", make_cam, "x.npz")):
        with rd.step(step, mod.config_hash(a)) as info:
            rd.sub("out").joinpath(file).write_bytes(b"A")
            info["outputs"] = [f"out/{file}"]
            t = os.stat(rd.path / "out" / file).st_mtime_ns - 10**9  # (a second back: on a coarse file clock, a
            os.utime(rd.path / "out" / file, ns=(t, t))  # file of the tick the next step starts in is its too)
    rb = RunDir(rd.path, b).init()
    with rb.step("train_cam", train_cam.config_hash(b), overwrite=True):
        (rd.path / "out" / "cam.safetensors").write_bytes(b"B")
    with pytest.raises(KeyboardInterrupt):
        with rb.step("make_cam", make_cam.config_hash(b), overwrite=True):
            raise KeyboardInterrupt
    ra = RunDir(rd.path, a)
    kept_started = rd.restorable("make_cam", make_cam.config_hash(a))["started"]
    assert not rd.restorable("train_cam", train_cam.config_hash(a))  # its network replaced
    logs: list[str] = []
    run_pipeline(a, ra, stop="make_cam", log=logs.append, dry_run=True)
    assert logs[0].startswith("[keep] make_cam: ") and logs[1].startswith("[redo] train_cam: finished with other")
    # (train_cam runs before it; or, once a second has passed, its record of other settings is newer already)
    assert logs[2] in ("[redo] make_cam: train_cam runs before it, so it would be made again",
                       f"[redo] make_cam: train_cam was made again at {rd.status('train_cam')['finished']}, after "
                       f"these outputs were made ({kept_started})"), logs
    standing = steps_standing(a, ra)  # A's CAMs, made from A's network, which is not there any more
    assert standing["train_cam"].startswith("finished with other settings (train_cam.epochs = 3 (now 8))")
    assert standing["make_cam"].startswith("made from train_cam's outputs, which do not stand (train_cam: ")
    assert restore_kept_records(a, ra, log=lambda m: None) == ["make_cam"]  # a real run: restored, then ...
    st = json.loads(rd.status_path("make_cam").read_text())
    rd.status_path("make_cam").write_text(json.dumps({**st, "started": "2000-01-01T00:00:00+0000"}))
    with ra.step("train_cam", train_cam.config_hash(a), overwrite=True):  # ... train_cam A made again first
        pass
    logs.clear()
    run_pipeline(a, ra, stop="make_cam", log=logs.append, dry_run=True)
    assert logs[1].startswith("[redo] make_cam: train_cam was made again at "), logs


def test_a_manifest_edited_in_place_makes_the_steps_that_read_it_again(tmp_path, demo_data, monkeypatch):
    """A training label fixed in the manifest: every step is made again; a test label: the steps that read test
    images (make_cam, the evaluations), not the training ones; a mask file changed: the steps that read masks (eval_cam
    on); an image file replaced under its name: the steps that open it, and those after them; the same rows written
    another way (order, a column no step reads) or the project moved: nothing is."""
    import shutil

    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.standing import metrics_standing
    from histowsss.steps import make_cam, train_cam

    cfg = load_config("demo")
    rd = RunDir(tmp_path / "run", cfg).init()
    for step, mod in (("train_cam", train_cam), ("make_cam", make_cam), ("eval_cam", eval_cam)):
        with rd.step(step, mod.config_hash(cfg)):
            pass
    (rd.path / "metrics").mkdir()
    (rd.path / "metrics" / "cam.json").write_text("{}")
    text = demo_data.read_text()

    def dry(c=cfg, r=rd) -> list[str]:
        logs: list[str] = []
        run_pipeline(c, r, stop="eval_cam", log=logs.append, dry_run=True)
        return [m.split(" (")[0] for m in logs[:-1]]

    lines = text.splitlines()
    demo_data.write_text("\n".join([lines[0] + ",note", *(r + ",x" for r in reversed(lines[1:]))]) + "\n")
    assert all(m.startswith("[skip]") for m in dry())
    demo_data.write_text(text.replace("train0.png,train,P0,benign", "train0.png,train,P0,malignant"))
    assert dry()[0] == "[redo] train_cam: the training splits' rows of the manifest changed since it ran"
    assert metrics_standing(cfg, rd.path)["cam"].startswith("eval_cam: made from make_cam's outputs, which do not "
                                                            "stand (train_cam: the training splits' rows of the ")
    demo_data.write_text(text.replace("test4.png,test,P4,benign", "test4.png,test,P4,malignant"))
    assert dry() == ["[skip] train_cam: finished with this configuration",  # (make_cam reads no label)
                     "[skip] make_cam: finished with this configuration",
                     "[redo] eval_cam: the rows of the manifest changed since it ran"]
    shutil.copy(demo_data.parent / "images" / "test4.png", demo_data.parent / "images" / "test4b.png")
    demo_data.write_text(text.replace("images/test4.png", "images/test4b.png"))  # another file under its name
    assert dry()[1] == "[redo] make_cam: the images of the manifest changed since it ran"
    demo_data.write_text(text.replace("masks/test4.png", "masks/test5.png"))
    assert dry()[1:] == ["[skip] make_cam: finished with this configuration",
                         "[redo] eval_cam: the masks of the manifest changed since it ran"]
    demo_data.write_text(text)
    mask = demo_data.parent / "masks" / "test4.png"  # a mask re-exported under its name (QuPath, corrected)
    before = mask.read_bytes()
    from PIL import Image

    Image.fromarray(np.zeros((24, 32), np.uint8)).save(mask)
    assert dry()[1:] == ["[skip] make_cam: finished with this configuration",
                         "[redo] eval_cam: the masks of the manifest changed since it ran"]
    mask.write_bytes(before)
    image = demo_data.parent / "images" / "test4.png"  # an image re-exported under its name (other stain, say)
    before = image.read_bytes()
    with Image.open(image) as im:
        Image.fromarray(255 - np.asarray(im.convert("RGB"))).save(image)
    assert dry() == ["[skip] train_cam: finished with this configuration",  # (a test image: no training step)
                     "[redo] make_cam: an image file was replaced since it ran",
                     "[redo] eval_cam: make_cam runs before it, so it would be made again"]
    logs: list[str] = []
    run_pipeline(cfg, rd, stop="eval_cam", log=logs.append, dry_run=True)  # (the file named, from the kept prints)
    assert logs[1].startswith("[redo] make_cam: an image file was replaced since it ran (image test4: same name")
    train_image = demo_data.parent / "images" / "train0.png"
    train_before = train_image.read_bytes()
    with Image.open(train_image) as im:
        Image.fromarray(255 - np.asarray(im.convert("RGB"))).save(train_image)
    assert dry()[0] == "[redo] train_cam: a training image file was replaced since it ran"
    for rec in ("train_cam", "make_cam"):  # records made before image files were fingerprinted say nothing of them
        st = json.loads(rd.status_path(rec).read_text())
        manifest = {k: v for k, v in st["manifest"].items() if "image_files" not in k}
        rd.status_path(rec).write_text(json.dumps({**st, "manifest": manifest}))
    assert all(m.startswith("[skip]") for m in dry())
    image.write_bytes(before)
    train_image.write_bytes(train_before)
    st = json.loads(rd.status_path("eval_cam").read_text())  # a record of the mask names alone (an earlier version)
    old = {k: v for k, v in st["manifest"].items() if "mask" not in k} | {"masks": "0" * 16, "train_masks": "0" * 16}
    rd.status_path("eval_cam").write_text(json.dumps({**st, "manifest": old}))
    assert all(m.startswith("[skip]") for m in dry())
    moved = tmp_path / "moved"  # the project moved whole: the same manifest
    shutil.copytree(tmp_path / "runs", moved / "runs")
    shutil.copytree(rd.path, moved / "run", symlinks=True)
    monkeypatch.chdir(moved)
    assert all(m.startswith("[skip]") for m in dry(cfg, RunDir(moved / "run", cfg)))


@pytest.mark.parametrize("labels", ["pseudo_or_cam", "best_on_train"])
def test_a_network_is_stale_when_the_labels_it_read_or_the_scores_that_picked_them_do_not_stand(tmp_path, labels,
                                                                                                demo_data):
    """train_seg with a label source chosen at run time reads what its record says it read (IRN's pseudo-masks
    here), and best_on_train the scores that chose them: their staleness is the network's."""
    from histowsss.engine.standing import metrics_standing
    from histowsss.steps import eval_sem_seg, eval_seg, train_seg

    cfg = load_config("demo", [f"train_seg.labels={labels}"])
    rd = RunDir(tmp_path / "run", cfg).init()
    for step, mod in (("make_sem_seg_labels", make_sem_seg_labels), ("eval_sem_seg", eval_sem_seg),
                      ("train_seg", train_seg), ("eval_seg", eval_seg)):
        with rd.step(step, mod.config_hash(cfg)) as info:
            info["label_source"] = "pseudo"
    (rd.path / "metrics").mkdir()
    (rd.path / "metrics" / "seg.json").write_text("{}")
    (rd.path / "metrics" / "sem_seg.json").write_text('{"splits": {}}')  # (best_on_train reads it: no masks here)
    assert metrics_standing(cfg, rd.path) == {}
    st = json.loads(rd.status_path("make_sem_seg_labels").read_text())
    rd.status_path("make_sem_seg_labels").write_text(json.dumps({**st, "state": "failed"}))  # a stopped --overwrite
    assert metrics_standing(cfg, rd.path)["seg"].startswith(
        "eval_seg: made from train_seg's outputs, which do not stand (make_sem_seg_labels: did not finish (failed")
    rd.status_path("make_sem_seg_labels").write_text(json.dumps(st))
    other = load_config("demo", [f"train_seg.labels={labels}", "ins_seg.min_area=20"])  # eval_sem_seg's own setting
    es = json.loads(rd.status_path("eval_sem_seg").read_text())
    rd.status_path("eval_sem_seg").write_text(json.dumps({**es, "config_hash": eval_sem_seg.config_hash(other)}))
    stale = metrics_standing(cfg, rd.path)
    if labels == "best_on_train":  # the scores that picked the pseudo-masks are of other settings
        assert stale["seg"].startswith("eval_seg: made from train_seg's outputs, which do not stand (eval_sem_seg: ")
    else:
        assert "seg" not in stale


def test_a_stopped_step_starts_over_when_its_inputs_changed_since_it_began(tmp_path, demo_data, monkeypatch):
    """make_cam stopped part-way, then train_cam made again (or the manifest edited): make_cam starts over instead
    of keeping the CAMs of the old network beside new ones; a stopped record of other settings starts over too."""
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.steps import make_cam, train_cam

    cfg = load_config("demo")
    rd = RunDir(tmp_path / "run", cfg).init()
    with rd.step("train_cam", train_cam.config_hash(cfg)):
        pass
    with pytest.raises(KeyboardInterrupt):
        with rd.step("make_cam", make_cam.config_hash(cfg)):
            raise KeyboardInterrupt
    called: list[bool] = []
    monkeypatch.setattr(make_cam, "run", lambda c, r, overwrite=False, reuse=False: called.append(overwrite) or {})
    logs: list[str] = []
    run_pipeline(cfg, rd, "make_cam", "make_cam", log=logs.append)
    assert logs == ["[run ] make_cam: goes on from where it stopped" + logs[0].split("stopped", 1)[1], logs[1]]
    assert called == [False]
    st = json.loads(rd.status_path("make_cam").read_text())
    rd.status_path("make_cam").write_text(json.dumps({**st, "state": "failed", "started": "2000-01-01T00:00:00+0000",
                                                      "first_started": "2000-01-01T00:00:00+0000"}))
    logs.clear()
    run_pipeline(cfg, rd, "make_cam", "make_cam", log=logs.append)
    assert logs[0].startswith("[run ] make_cam: starts over, not from where it stopped (train_cam was made again at ")
    assert "after it began (2000-01-01" in logs[0]
    assert called == [False, True]
    other = load_config("demo", ["make_cam.scales=[1.0]"])  # a stopped record of other settings: from the start
    rd.status_path("make_cam").write_text(json.dumps({**st, "state": "failed",
                                                      "config_hash": make_cam.config_hash(other)}))
    run_pipeline(cfg, rd, "make_cam", "make_cam", log=lambda m: None)
    assert called == [False, True, True]


def test_a_test_label_fixed_makes_eval_cam_again_but_not_the_steps_that_read_its_choices(tmp_path, demo_data,
                                                                                         monkeypatch):
    """eval_cam chooses its values on the training splits: a test label fixed makes it again (its test scores), and
    the steps that read it (the network trained on its CAM labels, eval_sem_seg) stand while what they read of it
    (its handoff) comes out the same; a training label fixed, or choices that come out otherwise, make them again."""
    import time

    from histowsss.engine.pipeline import run_pipeline

    from histowsss.engine.standing import metrics_standing, steps_standing

    from histowsss.engine.step_plan import step_plan

    cfg = load_config("demo", ["train_seg.labels=cam"])
    rd = RunDir(tmp_path / "run", cfg).init()
    plan = step_plan(cfg, stop="train_seg")
    choice = ["choice-A"]
    made: list[str] = []

    def fake(name: str, mod):
        def run(c, r, overwrite=False, reuse=False):
            with r.step(name, mod.config_hash(c), overwrite=overwrite) as info:
                if name == "eval_cam":
                    info.update(handoff=choice[0], train_handoff=choice[0])
            made.append(name)
            return {}
        return run

    for name, mod, *_ in plan:
        monkeypatch.setattr(mod, "run", fake(name, mod))
        mod.run(cfg, rd)
    made.clear()
    (rd.path / "metrics").mkdir()
    for tag in ("cam", "sem_seg"):
        (rd.path / "metrics" / f"{tag}.json").write_text("{}")
    text = demo_data.read_text()
    demo_data.write_text(text.replace("test4.png,test,P4,benign", "test4.png,test,P4,malignant"))

    def decisions(dry_run: bool = True) -> list[str]:
        logs: list[str] = []
        run_pipeline(cfg, rd, stop="train_seg", log=logs.append, dry_run=dry_run)
        return [m.split(" (")[0] for m in logs if m.startswith(("[redo]", "[run ]"))]

    assert decisions() == ["[redo] eval_cam: the rows of the manifest changed since it ran"]
    from histowsss.engine.preflight import check_inputs

    assert check_inputs(cfg, rd, plan, False) == ["eval_cam"]  # (its readers' inputs are not checked for nothing)
    standing = steps_standing(cfg, rd)
    assert standing["eval_cam"] and standing["train_seg"] is None  # its test scores alone are stale
    assert set(metrics_standing(cfg, rd.path)) == {"cam"}
    first = rd.status("eval_cam")["finished"]
    time.sleep(1.1)  # (records have a one-second clock)
    assert decisions(dry_run=False) == ["[redo] eval_cam: the rows of the manifest changed since it ran"]
    assert made == ["eval_cam"] and rd.status("eval_cam")["handoff_since"] == first != rd.status("eval_cam")["finished"]
    assert steps_standing(cfg, rd)["train_seg"] is None
    demo_data.write_text(text)  # the label put back, and eval_cam's choices now come out otherwise
    choice[0] = "choice-B"
    time.sleep(1.1)
    made.clear()
    lines = decisions(dry_run=False)
    assert lines[0] == "[redo] eval_cam: the rows of the manifest changed since it ran"
    again = f"eval_cam was made again at {rd.status('eval_cam')['finished']}, after these outputs were made"
    assert f"[redo] train_seg: {again}" in lines and f"[redo] eval_sem_seg: {again}" in lines
    assert rd.status("eval_cam")["handoff_since"] == rd.status("eval_cam")["finished"] and "train_seg" in made
    demo_data.write_text(text.replace("train0.png,train,P0,benign", "train0.png,train,P0,malignant"))
    assert "[redo] train_seg: the training splits' rows of the manifest changed since it ran" in decisions()
    assert steps_standing(cfg, rd)["train_seg"] is not None


def test_steps_that_read_the_cams_follow_make_cam_when_eval_cam_chooses_the_same(tmp_path, demo_data, monkeypatch):
    """train_seg on CAM labels reads the CAMs through eval_cam's choice, and eval_seg's gate make_cam's image
    probabilities: CAMs made again by another network make them again even when eval_cam's choices come out the
    same (image labels only: the defaults)."""
    import time

    from histowsss.engine.pipeline import run_pipeline

    from histowsss.engine.standing import steps_standing

    from histowsss.engine.step_plan import step_plan
    from histowsss.steps import train_cam

    cfg = load_config("demo", ["train_seg.labels=cam", "eval_seg.image_gate=true"])
    rd = RunDir(tmp_path / "run", cfg).init()
    network = ["net-1"]

    def fake(name: str, mod):
        def run(c, r, overwrite=False, reuse=False):
            with r.step(name, mod.config_hash(c), overwrite=overwrite) as info:
                if name == "eval_cam":
                    info.update(handoff="defaults", train_handoff="defaults")
                if name == "make_cam":
                    info.update(handoff=network[0], train_handoff=network[0])
            return {}
        return run

    for name, mod, *_ in step_plan(cfg, stop="eval_seg"):
        monkeypatch.setattr(mod, "run", fake(name, mod))
        mod.run(cfg, rd)
    time.sleep(1.1)
    network[0] = "net-2"
    logs: list[str] = []
    with pytest.raises(StepError):  # (refused: train_cam finished already; --overwrite makes it again)
        train_cam.run(cfg, rd)
    run_pipeline(cfg, rd, stop="make_cam", overwrite=True, log=logs.append)  # a new classifier and its CAMs
    standing = steps_standing(cfg, rd)
    assert standing["train_seg"] and standing["eval_seg"]
    logs.clear()
    run_pipeline(cfg, rd, stop="eval_seg", log=logs.append)
    redone = [m.split(":")[0] for m in logs if m.startswith("[redo]")]
    assert {"[redo] eval_cam", "[redo] train_seg", "[redo] eval_seg"} <= set(redone), logs
    assert rd.status("eval_cam")["handoff_since"] != rd.status("eval_cam")["finished"]  # its choices: the same
    assert any(m.startswith("[redo] train_seg: make_cam was made again at ") for m in logs), logs


def test_a_stopped_eval_cam_is_judged_by_the_record_it_replaces(tmp_path, demo_data, monkeypatch):
    """eval_cam stopped part-way after a test label was fixed: the dry run and the stale marks judge what the
    training steps read of it by the finished record the stopped run replaced (whose handoff the run carries on),
    so the network on CAM labels still stands; when that record was of other settings, it does not."""
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.standing import steps_standing
    from histowsss.engine.step_plan import step_plan

    cfg = load_config("demo", ["train_seg.labels=cam"])
    rd = RunDir(tmp_path / "run", cfg).init()
    for name, mod, *_ in step_plan(cfg, stop="train_seg"):
        with rd.step(name, mod.config_hash(cfg)) as info:
            if name == "eval_cam":
                info.update(handoff="A", train_handoff="A")
    demo_data.write_text(demo_data.read_text().replace("test4.png,test,P4,benign", "test4.png,test,P4,malignant"))
    with pytest.raises(KeyboardInterrupt):
        with rd.step("eval_cam", eval_cam.config_hash(cfg), overwrite=True):
            raise KeyboardInterrupt

    def decisions(c=cfg) -> list[str]:
        logs: list[str] = []
        run_pipeline(c, rd, stop="train_seg", log=logs.append, dry_run=True)
        return [m.split(" (")[0] for m in logs if m.startswith(("[redo]", "[run ]"))]

    assert decisions() == ["[run ] eval_cam: goes on from where it stopped"]
    assert steps_standing(cfg, rd)["eval_cam"].startswith("did not finish (interrupted, started ")
    assert steps_standing(cfg, rd)["train_seg"] is None
    st = rd.status("eval_cam")
    rd.status_path("eval_cam").write_text(json.dumps({**st, "prior_handoff": "x"}))  # an odd record: no crash
    assert steps_standing(cfg, rd)["train_seg"] is not None and decisions()[0].startswith("[run ] eval_cam")
    rd.status_path("eval_cam").write_text(json.dumps(st))
    from histowsss.steps import make_cam

    make_cam_done = rd.status("make_cam")
    with pytest.raises(KeyboardInterrupt):  # what eval_cam's finished record was made from is being made again
        with rd.step("make_cam", make_cam.config_hash(cfg), overwrite=True):
            raise KeyboardInterrupt
    assert steps_standing(cfg, rd)["train_seg"] is not None
    rd.status_path("make_cam").write_text(json.dumps(make_cam_done))
    other = load_config("demo", ["train_seg.labels=cam", "eval_cam.gate_thresholds=[0.5]"])
    st = rd.status("eval_cam")  # the finished record it replaced was of other settings: its choices tell nothing
    prior = {**st["prior_handoff"], "record": {**st["prior_handoff"]["record"],
                                               "config_hash": eval_cam.config_hash(other)}}
    rd.status_path("eval_cam").write_text(json.dumps({**st, "prior_handoff": prior}))
    assert "[redo] train_seg: eval_cam runs before it, so it would be made again" in decisions()


def test_a_run_with_nothing_to_score_or_cams_left_out_is_refused_before_any_step(tmp_path, demo_data):
    """No test image for eval_seg (found only after every training step, before), and make_cam.splits leaving out a
    split eval_cam reads (make_cam --overwrite could never fix it): said before anything runs."""
    cfg = load_config("demo", ["data.test_splits=[]", "upper_bound=false"])
    rd = RunDir(tmp_path / "run", cfg).init()
    with pytest.raises(StepError, match=r"eval_seg has no image to score.*--to train_seg"):
        plan_steps(cfg, rd)
    assert not (rd.path / "status").exists()
    plan_steps(cfg, rd, stop="train_seg")  # ended before it: fine
    cfg = load_config("demo", ["make_cam.splits=[train]", "upper_bound=false"])
    with pytest.raises(StepError, match=r"make_cam.splits \(train\) leaves out split\(s\) val, test, whose CAMs "
                                        r"eval_cam reads"):
        plan_steps(cfg, RunDir(tmp_path / "run2", cfg).init())


def test_image_files_that_are_not_there_are_named_before_any_step(tmp_path, demo_data):
    cfg = load_config("demo", ["upper_bound=false"])
    rd = RunDir(tmp_path / "run", cfg).init()
    first = sorted((demo_data.parent / "images").glob("*.png"))[0]
    first.unlink()
    with pytest.raises(StepError, match=r"1 of the 6 image file\(s\) are not found.*relative paths are read from"):
        plan_steps(cfg, rd)
    for f in (demo_data.parent / "images").glob("*.png"):
        f.unlink()
    with pytest.raises(StepError, match=r"none of the 6 image file\(s\) is found"):
        plan_steps(cfg, rd)


def test_a_train_irn_crop_off_the_backbone_stride_is_refused_before_any_step(tmp_path, demo_data):
    cfg = load_config("demo", ["upper_bound=false", "train_irn.crop_size=200"])
    rd = RunDir(tmp_path / "run", cfg).init()
    with pytest.raises(StepError, match=r"train_irn.crop_size \(200\) must be a multiple of the backbone's largest "
                                        r"stride \(16\), e.g. 192"):
        plan_steps(cfg, rd)
    plan_steps(load_config("demo", ["upper_bound=false", "train_irn.crop_size=192"]), rd)


def test_jpeg_masks_are_warned_about_when_a_run_plans(tmp_path, demo_data):
    import csv
    from pathlib import Path

    from PIL import Image

    rows = list(csv.DictReader(demo_data.open()))
    mask = demo_data.parent / rows[0]["mask"]
    Image.open(mask).convert("L").save(mask.with_suffix(".jpg"))
    rows[0]["mask"] = str(Path(rows[0]["mask"]).with_suffix(".jpg"))
    with demo_data.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = load_config("demo", ["upper_bound=false"])
    with pytest.warns(UserWarning, match=r"1 mask\(s\) are JPEG files"):
        plan_steps(cfg, RunDir(tmp_path / "run", cfg).init())
