"""Run pipeline steps in order, skipping finished ones (same config hash) and resuming unfinished ones."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

from histowsss.config import ConfigError, RunConfig
from histowsss.config.run import digests_held
from histowsss.engine.run_dir import WEIGHTS_FILE_STEPS, RunDir, StepError
from histowsss.steps.registry import PIPELINE, select_steps, step_module


def step_config_hash(cfg: RunConfig, module) -> str:
    """The config hash a step records (each step module exposes ``config_hash(cfg)``)."""
    return module.config_hash(cfg)


def status_name(cfg: RunConfig, name: str, module) -> str:
    """The status record a step writes: its name, or the module's ``status_name(cfg)`` where one network of a
    step has several variants (train_seg / eval_seg: weak and supervised)."""
    fn = getattr(module, "status_name", None)
    return fn(cfg) if fn is not None else name


# steps that share their work among torchrun's processes (DDP training; evaluation on rank 0 after it)
DISTRIBUTED_STEPS = ("train_seg", "eval_seg", "train_seg_supervised", "eval_seg_supervised")


def _start_from(cfg: RunConfig, run: RunDir, need: str) -> str:
    """The step to start from so that ``need`` can run: ``need``, or the earliest step before it (through what each
    reads, ``requires``) that has not finished with these settings, so that the suggested command runs at once."""
    if need not in PIPELINE:
        return need
    for before, h in getattr(step_module(need), "requires", lambda c: [])(cfg):
        if not _finished(cfg, run, before, h):
            return min(need, _start_from(cfg, run, before), key=PIPELINE.index)
    return need


def check_inputs(cfg: RunConfig, run: RunDir, plan: list[tuple], overwrite: bool, stop: str | None = None
                 ) -> list[str]:
    """StepError, before anything is written, when a step of ``plan`` that has work to do (:func:`step_decision`:
    not finished with these settings, or made again as its inputs are) reads a step (its ``requires(cfg)``) that
    neither finished with this configuration nor comes earlier in the plan (``--from`` past a step whose outputs
    are missing or of other settings). Returns the status keys of the steps with work to do."""
    scheduled: set[str] = set()
    will_run: dict[str, dict] = {}
    checked: set[str] = set()  # the networks built on the meta device: once per plan
    to = f" --to {stop}" if stop else ""

    def start(need: str) -> tuple[str, str]:
        """The first step missing for ``need``, and the command that starts from it."""
        first = _start_from(cfg, run, need)
        return first, f"`histowsss run CONFIG --run {run.path} --from {first}{to}` (or leave out --from)"

    for entry in plan:
        name, mod, h, key, off = entry
        if off:
            continue
        if step_decision(cfg, run, entry, overwrite, will_run)[0] != "skip":
            # (as the dry run: made again for the test splits alone, what the training steps read of it stands)
            will_run[name] = handoffs_standing(cfg, run, entry, will_run)
            _check_weights_file(cfg, key)
            setting = WEIGHTS_FILE_STEPS.get(key)
            if setting is not None and setting not in checked:
                _check_network(cfg, key, setting)
                checked.add(setting)
            for need, need_h in getattr(mod, "requires", lambda c: [])(cfg):
                if need in scheduled or _finished(cfg, run, need, need_h):
                    continue
                first, command = start(need)
                raise StepError(f"{key} needs the outputs of {need}, which {_why_not(run, need)} in {run.path}; start "
                                + ("from it" if first == need else f"from {first}, which it needs in turn")
                                + f": {command}")
            either = getattr(mod, "requires_any", lambda c: [])(cfg)  # one of these is enough (a fallback label source)
            if either and not any(need in scheduled or _finished(cfg, run, need, need_h) for need, need_h in either):
                names = " or ".join(need for need, _ in either)
                whys = "; ".join(f"{need} {_why_not(run, need)}" for need, _ in either)
                first = min((need for need, _ in either), key=PIPELINE.index)
                raise StepError(f"{key} needs the outputs of {names} ({whys}) in {run.path}; start from "
                                + ": ".join(start(first)))
            for need, need_h in getattr(mod, "prefers", lambda c: [])(cfg):  # a fallback taken silently otherwise
                if need in scheduled or _finished(cfg, run, need, need_h) or not run.status(need):
                    continue
                instead = ("would train on the CAM labels instead of IRN's pseudo-masks"
                           if need == "make_sem_seg_labels" else "would not compare IRN's pseudo-masks with the CAM "
                           "labels (it would take the pseudo-masks, as pseudo_or_cam)")
                raise StepError(f"{key} (train_seg.labels={cfg.train_seg.labels}) would not read {need}, which "
                                f"{_why_not(run, need)} in {run.path}, and {instead}; start from "
                                + ": ".join(start(need)) + ", or say which labels with train_seg.labels=pseudo or cam")
        scheduled.add(key)
    return [key for name, _, _, key, _ in plan if name in will_run]


def check_manifest(cfg: RunConfig, run: RunDir, todo: list[str]) -> None:
    """ManifestError / StepError, before any step runs, for what the steps would otherwise find an hour in: a
    manifest that is not there (a project moved, a relative path read from another folder), a manifest row problem
    (a duplicate image, an empty label: :func:`~histowsss.data.manifest.scan_manifest`, files not opened;
    `histowsss data check` opens them), and the supervised upper bound over training images without a mask.
    Nothing is checked when no step has work to do (``todo``, :func:`check_inputs`)."""
    if not todo:
        return
    manifest = Path(cfg.data.manifest)
    if not manifest.is_file():
        from histowsss.engine.run_paths import recorded_working_folder

        where = "" if manifest.is_absolute() else f" (a relative path is read from the current folder, {Path.cwd()})"
        base = recorded_working_folder(run.path) if not manifest.is_absolute() else None
        started = ""
        if base is not None and not base.is_dir():
            started = f" ({base}, where this run folder's last `histowsss run` started, is gone: a project moved?)"
        elif base is not None and base.resolve() != Path.cwd().resolve():
            started = f" ({base}: this run folder's last `histowsss run` started there)"
        raise StepError(f"{cfg.data.manifest}: the manifest (data.manifest) is not a file{where}; {todo[0]} and the "
                        f"steps after it read it. Start the command from the folder the path is relative to{started}, "
                        "or give its path with --set data.manifest=PATH (other settings: every step is made again)"
                        + (". `histowsss demo` writes the demo's data and runs it" if cfg.name == "demo" else ""))
    from histowsss.data.manifest import ManifestError, scan_manifest

    samples, problems = scan_manifest(cfg.data)
    if problems:
        raise ManifestError(f"{cfg.data.manifest}: {len(problems)} problem(s), found before any step ran:\n  "
                            + "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if
                                                             len(problems) > 20 else "")
                            + "\n(`histowsss data check MANIFEST --config CONFIG` lists them all and opens every file)")
    if "train_seg_supervised" in todo:
        from histowsss.steps.seg_labels import train_splits

        train = [s for s in samples if s.split in train_splits(cfg)]
        missing = [s.name for s in train if s.mask is None]
        if missing:
            raise StepError(f"train_seg_supervised (upper_bound) needs a mask for every training image; {len(missing)} "
                            f"of {len(train)} have none (e.g. {', '.join(missing[:3])}): fill the "
                            f"{cfg.data.mask_column!r} column, set train_seg.splits to splits with masks, or set "
                            "upper_bound=false")


def _check_weights_file(cfg: RunConfig, key: str) -> None:
    """StepError, before any step runs, when step ``key`` builds its network from a local weights file
    (``WEIGHTS_FILE_STEPS``) that is not there: not after the steps before it have run for an hour."""
    setting = WEIGHTS_FILE_STEPS.get(key)
    if setting is None:
        return
    section, name = setting.split(".")
    w = getattr(getattr(cfg, section), name)
    if w not in ("imagenet", "none") and not Path(w).expanduser().is_file():
        raise StepError(f"{w}: {setting} is not a file (a relative path is read from the current folder, "
                        f"{Path.cwd()}); {key} builds its network from it. Fix the path, or set {setting}=none")


def _check_network(cfg: RunConfig, key: str, setting: str) -> None:
    """StepError, before any step runs, when step ``key`` could not build its network (the CAM backbone for
    ``backbone.weights``; train_seg's architecture, encoder and encoder_model_kwargs for
    ``train_seg.encoder_weights``) or its weights file does not fit it: not an hour into the run."""
    from histowsss.models.backbone import check_backbone
    from histowsss.models.segnet import check_segnet
    from histowsss.models.weights import WeightsError

    section = setting.split(".")[0]
    w = Path(getattr(getattr(cfg, section), setting.split(".")[1])).expanduser()
    st = w.stat() if w.is_file() else None
    done = (setting, getattr(cfg, section).model_dump_json(), len(cfg.data.classes.names),
            st and (st.st_size, st.st_mtime_ns))
    if done in _NETWORKS_CHECKED:  # (`run` plans twice: before its lock, and when it runs; a file is read once)
        return
    try:
        if section == "backbone":
            check_backbone(cfg.backbone)
        else:
            check_segnet(cfg.train_seg, len(cfg.data.classes.names))
    except (WeightsError, ValueError) as e:
        raise StepError(f"{key} could not build its network: {e}") from None
    _NETWORKS_CHECKED.add(done)


_NETWORKS_CHECKED: set[tuple] = set()  # the network settings (and weights file) _check_network passed


def _finished(cfg: RunConfig, run: RunDir, key: str, h: str) -> bool:
    """Whether step ``key`` finished with hash ``h``: its record, or one of an earlier hash rule
    (:func:`_legacy_done`). (Kept records to restore: ``run`` is then :func:`with_kept`'s view.)"""
    return run.is_done(key, h) or _legacy_done(cfg, run, key)


def _legacy_done(cfg: RunConfig, run: RunDir, key: str) -> bool:
    """True when step ``key`` finished with these settings under an earlier hash rule (adopted when the run starts,
    :func:`adopt_legacy_records`)."""
    return key in PIPELINE and legacy_match(cfg, run, key, step_module(key)) is not None


def _why_not(run: RunDir, need: str) -> str:
    """Why the step ``need`` cannot be read: it has not finished, or finished with settings that differ (named)."""
    st = run.status(need)
    if not st or st.get("state") != "done":
        return "has not finished"
    step_hash = step_module(need).config_hash if need in PIPELINE else None
    return "finished with other settings" + (f" ({d})" if (d := run.settings_diff(st, step_hash=step_hash)) else "")


def inputs_newer(cfg: RunConfig, run: RunDir, mod, key: str, training: bool | None = None) -> str | None:
    """Why the finished step ``key`` is stale: one of the steps it reads (``requires(cfg)``) finished after it
    started, so its outputs were made from files since replaced (what it reads of them changed, for a step that
    records that: :meth:`RunDir.made_again_after`; ``training``: of their training splits' part, by default for the
    steps of :data:`TRAINING_SIDE`). None when it stands."""
    training = key in TRAINING_SIDE if training is None else training
    for need, _ in getattr(mod, "requires", lambda c: [])(cfg):
        if (finished := run.made_again_after(need, key, training)) is not None:
            st = run.status(key) or {}
            return (f"{need} was made again at {finished}, after these outputs were made "
                    f"({st.get('first_started') or st.get('started')})")
    return None


def legacy_match(cfg: RunConfig, run: RunDir, key: str, mod) -> str | None:
    """The hash of a finished record of step ``key`` made under an earlier hash rule (the module's
    ``legacy_config_hashes``) with the settings of now, as far as this step reads them; None when it is not one.
    The earlier rule is applied to the config of now and to the one the record ran with (its ``run_config``): a run
    that changes a setting the new rule leaves out (a weak-label one, for the upper bound) still keeps the record."""
    if not hasattr(mod, "legacy_config_hashes"):
        return None
    st = run.status(key)
    h = mod.config_hash(cfg)
    old = (st or {}).get("config_hash")
    if not st or st.get("state") != "done" or old == h:
        return None
    if old in mod.legacy_config_hashes(cfg):
        return old
    then = _recorded_config(run, st)
    if then is not None and mod.config_hash(then) == h and old in mod.legacy_config_hashes(then):
        return old
    return None


def _recorded_config(run: RunDir, st: dict) -> RunConfig | None:
    """The config a status record names (``run_config``, kept in config_history/), or None when unreadable."""
    from histowsss.config import load_config

    rel = st.get("run_config")
    if not rel or not (run.path / rel).is_file():
        return None
    try:
        return load_config(str(run.path / rel))
    except Exception:  # written by another version (an option since removed): not comparable
        return None


def adopt_legacy_records(cfg: RunConfig, run: RunDir, log: Callable[[str], None] = print) -> list[str]:
    """Relabel finished steps recorded under an earlier hash rule of the same settings (a step's
    ``legacy_config_hashes(cfg)``, e.g. the upper bound before its hash left out the weak-label settings): their
    status record, and what the step keeps of the hash beside its outputs (``adopt_legacy``), take the hash of now,
    so they stay finished instead of being redone. Outputs are not touched. Returns the steps relabelled."""
    import os

    from histowsss.engine.atomic import write_json

    if os.environ.get("RANK", "0") != "0" or not (run.path / "status").is_dir():
        return []  # (the other ranks take such a record as finished without writing: legacy_match)
    adopted = []
    for name in PIPELINE:
        mod = step_module(name)
        key, h = status_name(cfg, name, mod), mod.config_hash(cfg)
        old = legacy_match(cfg, run, key, mod)
        if old is None:
            continue
        st = run.status(key)
        if hasattr(mod, "adopt_legacy"):
            mod.adopt_legacy(cfg, run, old, h)
        write_json(run.status_path(key), {**st, "config_hash": h, "legacy_config_hash": old})
        log(f"[keep] {key}: recorded under an earlier hash rule ({old}); the same settings, relabelled {h}")
        adopted.append(key)
    return adopted


def step_plan(cfg: RunConfig, start: str | None = None, stop: str | None = None) -> list[tuple]:
    """The steps ``start``..``stop`` as (name, module, hash, status key, reason it is off or None), unchecked."""
    plan = []
    for name in select_steps(start, stop):
        mod = step_module(name)
        plan.append((name, mod, mod.config_hash(cfg), status_name(cfg, name, mod),
                     getattr(mod, "disabled", lambda c: None)(cfg)))
    return plan


def kept_to_restore(cfg: RunConfig, run: RunDir) -> dict[str, dict]:
    """Status key -> kept finished record of these settings whose outputs are unchanged (:meth:`RunDir.restorable`:
    a run with other settings was stopped in the step before rewriting them)."""
    if not (run.path / "status" / "kept").is_dir():
        return {}
    out = {}
    for name in PIPELINE:
        mod = step_module(name)
        key, h = status_name(cfg, name, mod), mod.config_hash(cfg)
        if (kept := run.restorable(key, h)) is not None:
            out[key] = kept
    return out


def with_kept(cfg: RunConfig, run: RunDir) -> RunDir:
    """``run`` as it is once the kept records of these settings are restored (:func:`restore_kept_records`): what
    a dry run, the checks before a run and torchrun's other processes decide on, as the run itself does."""
    kept = kept_to_restore(cfg, run)
    return run.restored_view(kept) if kept else run


def restore_kept_records(cfg: RunConfig, run: RunDir, log: Callable[[str], None] = print,
                         dry_run: bool = False) -> list[str]:
    """Make the kept finished records of these settings whose outputs are unchanged (:func:`kept_to_restore`) the
    steps' records again, so going back to the settings of before does not make that step and every later one
    again (each is then decided as any finished record: made again if an input is). Under torchrun only the first
    process writes; ``dry_run`` writes nothing. Returns the steps restored."""
    import os

    restored = []
    for key, kept in kept_to_restore(cfg, run).items():
        if not dry_run and os.environ.get("RANK", "0") == "0":
            run.restore(key, kept["config_hash"])
        log(f"[keep] {key}: finished with these settings at {kept.get('finished', '?')}, its outputs unchanged since "
            "(a run with other settings stopped before rewriting them): its record "
            + ("would be restored" if dry_run else "is restored"))
        restored.append(key)
    return restored


def plan_steps(cfg: RunConfig, run: RunDir, start: str | None = None, stop: str | None = None,
               overwrite: bool = False) -> list[tuple]:
    """The steps ``start``..``stop`` as (name, module, hash, status key, reason it is off or None), checked before
    anything is written: test splits that are not held out (:func:`histowsss.config.split_leaks`), unknown step
    names, and under torchrun (WORLD_SIZE > 1) steps other than the
    segmentation ones with work to do (they would run once per process, all on the same files), are errors."""
    from histowsss.config import background_only_settings, split_leaks
    from histowsss.engine.distributed import env_world

    leaks = split_leaks(cfg)
    if leaks:  # test images trained on, or settings chosen on them
        raise ConfigError("; ".join(leaks))
    unused = background_only_settings(cfg)
    if unused:  # they would be recorded as applied and do nothing
        raise ConfigError("; ".join(unused))
    plan = step_plan(cfg, start, stop)
    todo = check_inputs(cfg, run, plan, overwrite, stop)
    check_manifest(cfg, run, todo)
    world = env_world()[1]
    if world > 1:
        todo = [key for name, _, _, key, _ in plan if key in todo and name not in DISTRIBUTED_STEPS]
        if todo:
            raise ConfigError(f"{', '.join(todo)} would run in each of the {world} torchrun processes; only the "
                              "segmentation steps share their work: run the earlier steps in one process first "
                              f"(`histowsss run CONFIG -r {run.path} --to eval_sem_seg`), then torchrun with "
                              "--from train_seg --to eval_seg")
    return plan


def _why_run(run: RunDir, key: str, h: str, overwrite: bool, mod=None) -> str:
    """The log line of a step about to run: new, made again (which of the settings it reads changed), going on after
    a stop, or starting over."""
    st = run.status(key) or {}
    state = st.get("state")
    step_hash = getattr(mod, "config_hash", None)
    if state == "done":
        if overwrite:
            return f"[redo] {key}: --overwrite"
        diff = run.settings_diff(st, step_hash=step_hash) or "its inputs changed"
        return f"[redo] {key}: finished with other settings ({diff}); made again"
    if state in ("running", "failed"):
        if overwrite:
            return f"[run ] {key}: starts over (--overwrite; it had stopped, {_stopped(st)})"
        if st.get("config_hash") == h:
            return f"[run ] {key}: goes on from where it stopped ({_stopped(st)} at {st.get('started', '?')})"
        diff = run.settings_diff(st, step_hash=step_hash)
        return f"[run ] {key}: starts over (it had stopped with other settings" + (f": {diff}" if diff else "") + ")"
    return f"[run ] {key}"


def _stopped(st: dict) -> str:
    """How a step that did not finish stopped: ``interrupted`` (Ctrl-C, SIGTERM), ``failed`` (an error) or
    ``running`` (its process was killed hard, or runs now)."""
    if st.get("state") == "failed" and str(st.get("error", "")).startswith(("KeyboardInterrupt", "SystemExit")):
        return "interrupted"
    return str(st.get("state"))


def _clicks_stale(cfg: RunConfig, run: RunDir, name: str, key: str) -> str | None:
    """Why a finished step the clicks act in (``points.use_in``) must be made again: its clicks were changed since
    it ran (the steps after it follow as their input is made again); None otherwise."""
    from histowsss.data.points import CLICK_STEPS, uses_points

    if name not in {CLICK_STEPS[w] for w in CLICK_STEPS if uses_points(cfg, w)}:
        return None
    st = run.status(key) or {}
    if run.clicks_changed(st):
        return "the clicks changed since it ran (points.file or the manifest's points cells); made again"
    return None


# the steps that read only the training splits' rows of the manifest (the others read every split; eval_sem_seg
# scores the pseudo-masks of the IRN's training images)
TRAINING_SIDE = ("train_cam", "cam_to_ir_label", "train_irn", "make_sem_seg_labels", "make_ins_seg_labels",
                 "eval_sem_seg", "train_seg", "train_seg_supervised")


# the steps that read the IRN's images (ir_label.splits, default train + val)
IRN_SIDE = ("cam_to_ir_label", "train_irn", "make_sem_seg_labels", "make_ins_seg_labels", "eval_sem_seg")

# the steps that open image files (cam_to_ir_label too with ir_label.crf); the others read what these made of them
IMAGE_READERS = ("train_cam", "make_cam", "train_irn", "make_sem_seg_labels", "train_seg", "train_seg_supervised",
                 "eval_seg", "eval_seg_supervised")


def _manifest_stale(cfg: RunConfig, run: RunDir, name: str, key: str, training_only: bool = False) -> str | None:
    """Why a step must be made again because the manifest was edited in place since it ran
    (:meth:`RunConfig.manifest_digests` against its record): the rows it reads (the training splits' for the steps
    of :data:`TRAINING_SIDE`; every split's for the evaluations; for make_cam only which images, under which name
    and split), the masks of those rows where it reads masks (eval_cam on; train_cam when its labels come from
    masks: patch labels by mask fraction, or no label column), or their image files' contents where it opens them
    (:data:`IMAGE_READERS`). None otherwise, also for records made before the manifest was recorded.
    ``training_only``: the training splits' alone, for any step (what its handoff is made from,
    :func:`handoff_stands`)."""
    then = (run.status(key) or {}).get("manifest")
    if not isinstance(then, dict):
        return None
    now = cfg.manifest_digests()
    if now is None:
        return None
    part = "train_" if name in TRAINING_SIDE or training_only else ""
    which = "the training splits' " if part else "the "
    # (an image file replaced under its name: "image_files" holds each file's fingerprint; records made before it
    # hold none and say nothing of them)
    opens_images = name in IMAGE_READERS or (name == "cam_to_ir_label" and cfg.ir_label.crf)
    files_changed = opens_images and then.get(part + "image_files", now[part + "image_files"]) != now[
        part + "image_files"]
    if name == "make_cam":  # (CAMs of every class for every image: no label, patient or mask is read)
        if then.get("images", now["images"]) != now["images"]:
            return f"the images of the manifest changed since it ran ({cfg.data.manifest}); made again"
        if files_changed:
            return (f"an image file was replaced since it ran (same name, other contents or unreadable; "
                    f"{cfg.data.manifest}); made again")
        return None
    if then.get(part + "rows", now[part + "rows"]) != now[part + "rows"]:
        return (f"{which}rows of the manifest changed since it ran (images, splits, patients or labels; "
                f"{cfg.data.manifest}); made again")
    masks_labels = not cfg.data.has_labels or (cfg.data.patches is not None
                                               and cfg.data.patches.label_rule == "mask_fraction")
    reads_masks = PIPELINE.index(name) >= PIPELINE.index("eval_cam") or (name == "train_cam" and masks_labels)
    # ("mask_files": names and contents; records that hold only the names, "masks", say nothing of them)
    if reads_masks and then.get(part + "mask_files", now[part + "mask_files"]) != now[part + "mask_files"]:
        return f"{which}masks of the manifest changed since it ran ({cfg.data.manifest}); made again"
    if files_changed:
        return (f"{'a training' if part else 'an'} image file was replaced since it ran (same name, other contents "
                f"or unreadable; {cfg.data.manifest}); made again")
    if name in IRN_SIDE:  # (ir_label.splits may name a split the other training steps do not read)
        for key_, what in (("irn_rows", "rows"), ("irn_mask_files", "masks"), ("irn_image_files", "image files")):
            reads = {"irn_rows": True, "irn_mask_files": reads_masks, "irn_image_files": opens_images}[key_]
            if reads and then.get(key_, now[key_]) != now[key_]:
                return (f"the IRN splits' {what} of the manifest changed since it ran (ir_label.splits; "
                        f"{cfg.data.manifest}); made again")
    return None


def _weights_stale(run: RunDir, key: str) -> str | None:
    """Why a finished step that read a weights file (``WEIGHTS_FILE_STEPS``) must be made again: it changed (same path,
    other contents); None otherwise (also when the file is not there: a step that needs it says so when it runs)."""
    if run.weights_changed(key, run.status(key) or {}):
        return f"the weights file ({WEIGHTS_FILE_STEPS[key]}) changed since it ran; made again"
    return None


def _report_clicks(cfg: RunConfig, run: RunDir, plan: list, overwrite: bool, log: Callable[[str], None]) -> None:
    """Before any step runs: when a step that uses clicks will run, what it will make of them (and a bad click
    stops the run here, not after the CAM stage)."""
    from histowsss.data.points import CLICK_STEPS, clicks_report, uses_points

    steps = {CLICK_STEPS[w] for w in CLICK_STEPS if uses_points(cfg, w)}
    if any(name in steps and not off and (overwrite or not _finished(cfg, run, key, h)
                                          or _clicks_stale(cfg, run, name, key))
           for name, _, h, key, off in plan):
        for line in clicks_report(cfg):
            log(line)


def run_pipeline(cfg: RunConfig, run: RunDir, start: str | None = None, stop: str | None = None,
                 overwrite: bool = False, log: Callable[[str], None] = print,
                 dry_run: bool = False) -> dict[str, dict]:
    """Run steps ``start``..``stop``; a finished step with the same config is skipped unless ``overwrite``
    (see :func:`plan_steps` for what is refused). ``dry_run``: say what each step would do and why, write
    nothing (the steps that would run map to whether what their readers read of them stands,
    :func:`handoffs_standing`)."""
    with digests_held():  # (the manifest as it is now, looked at once for the checks; each step records its own)
        run.manifest_digests(keep=not dry_run)  # (image and mask fingerprints of earlier processes, kept for later)
        if not dry_run:
            adopt_legacy_records(cfg, run, log)
        restore_kept_records(cfg, run, log, dry_run)
        run = with_kept(cfg, run)  # (a dry run, torchrun's other processes: the folder as the first one makes it)
        plan = plan_steps(cfg, run, start, stop, overwrite)
        _report_clicks(cfg, run, plan, overwrite, log)
    with digests_held() if dry_run else nullcontext():
        return _run_plan(cfg, run, plan, overwrite, log, dry_run)


def _run_plan(cfg: RunConfig, run: RunDir, plan: list[tuple], overwrite: bool, log: Callable[[str], None],
              dry_run: bool) -> dict[str, dict]:
    """The steps of ``plan`` in order, each as :func:`step_decision` decides (see :func:`run_pipeline`)."""
    results: dict[str, dict] = {}
    for entry in plan:
        name, mod, h, key, off = entry
        verb, line = step_decision(cfg, run, entry, overwrite, results if dry_run else None)
        log(line)
        if verb in ("off", "skip"):
            continue
        if dry_run:  # (made again with what later steps read of it unchanged: they are not made again for it)
            results[name] = handoffs_standing(cfg, run, entry, results)
            continue
        t0 = time.time()
        st = run.status(key)
        # start over: asked, stale, or a record of other settings (finished, or stopped: nothing of it to go on from)
        redo = overwrite or verb == "restart" or (st is not None and (st.get("state") == "done"
                                                                      or st.get("config_hash") != h))
        # (a step that keeps its outputs that still hold, when it is made again for other reasons than --overwrite)
        reuse = {"reuse": not overwrite} if getattr(mod, "REUSES_OUTPUTS", False) else {}
        results[name] = mod.run(cfg, run, overwrite=redo, **reuse) or {}
        run.forget_restored(key)
        log(f"[done] {key} in {time.time() - t0:.1f} s")
    if dry_run:
        log(f"dry run: {len(results)} step(s) would run" + (f" ({', '.join(results)})" if results else "")
            + f"; nothing was written to {run.path}")
    return results


def step_decision(cfg: RunConfig, run: RunDir, entry: tuple, overwrite: bool = False,
                  will_run: dict | None = None) -> tuple[str, str]:
    """What ``run`` does with the plan ``entry`` (:func:`step_plan`) and the log line that says why: ``off`` (the
    config leaves it out), ``skip`` (finished with these settings and inputs), ``redo`` (finished, made again),
    ``restart`` (a stopped step starts over: an input, the manifest, its clicks or weights file changed since it
    began) or ``run``. ``will_run``: in a dry run, the steps said to run before it (a real run sees those from the
    new outputs' times)."""
    name, mod, h, key, off = entry
    if off:
        return "off", f"[off ] {name}: {off}"
    st = run.status(key)
    if (run.is_done(key, h) or legacy_match(cfg, run, key, mod) is not None) and not overwrite:
        # finished outputs that no longer follow from the folder although the hash matches: an input step was
        # made again after them (--overwrite), or the step itself knows why (train_seg's label choice)
        why = (inputs_newer(cfg, run, mod, key) or _clicks_stale(cfg, run, name, key) or _weights_stale(run, key)
               or _manifest_stale(cfg, run, name, key)
               or (_runs_before(cfg, mod, will_run, key in TRAINING_SIDE) if will_run is not None else None)
               or (mod.stale_reason(cfg, run) if hasattr(mod, "stale_reason") else None))
        if why is None:
            return "skip", f"[skip] {key}: finished with this configuration"
        return "redo", f"[redo] {key}: {why}"
    # a stopped step of these settings whose files so far were made from inputs, a manifest, clicks or a weights
    # file as they were then: it starts over instead of mixing them with new ones
    if not overwrite and st is not None and st.get("state") in ("running", "failed") and st.get("config_hash") == h:
        why = (inputs_newer(cfg, run, mod, key) or _clicks_stale(cfg, run, name, key)
               or _manifest_stale(cfg, run, name, key)
               or (f"the weights file ({WEIGHTS_FILE_STEPS[key]}) changed" if run.weights_changed(key, st) else None)
               or (_runs_before(cfg, mod, will_run, key in TRAINING_SIDE) if will_run is not None else None))
        if why is not None:
            why = (why.removesuffix("; made again").removesuffix(", so it would be made again")
                   .replace("after these outputs were made", "after it began"))
            return "restart", f"[run ] {key}: starts over, not from where it stopped ({why})"
    return ("redo" if (st or {}).get("state") == "done" else "run"), _why_run(run, key, h, overwrite, mod)


def steps_standing(cfg: RunConfig, run: RunDir) -> dict[str, str | None]:
    """For each step's status record: None when its finished outputs follow from ``cfg`` and the folder, else why
    not: not finished, other settings, an input made again after it (what a run would make again), or an input
    that does not stand itself (a step whose input has no record says nothing of it). For the report and the run's
    closing table, whose numbers may come from earlier settings (a run stopped after config.yaml was rewritten) or
    from outputs a stopped ``--overwrite`` made again only in part."""
    with digests_held():
        run.manifest_digests(keep=False)  # (the fingerprints a run kept: a report reads, not writes, them)
        return _steps_standing(cfg, run)


def _steps_standing(cfg: RunConfig, run: RunDir) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    root: dict[str, str] = {}  # the step whose own record does not stand, for those that read it
    # steps that do not stand, but what the training steps (True) / the other steps (False) read of them does
    handoff_ok: dict[bool, set[str]] = {True: set(), False: set()}
    run = with_kept(cfg, run)

    def keep_handoff(entry: tuple, reads: list[str]) -> None:
        for training in (True, False):
            if all(out.get(n) is None or n in handoff_ok[True] for n in reads) and handoff_stands(
                    cfg, run, entry, training=training):
                handoff_ok[training].add(entry[3])

    for name, mod, h, key, _ in step_plan(cfg):
        st = run.status(key)
        if st is None:
            out[key] = "has not run"
            continue
        if st.get("state") != "done":
            diff = run.settings_diff(st, step_hash=mod.config_hash) if st.get("config_hash") != h else ""
            out[key] = f"did not finish ({_stopped(st)}, started {st.get('started', '?')}" + (
                f", with other settings: {diff})" if diff else ")")
            root[key] = key
            keep_handoff((name, mod, h, key, None), [n for n, _ in getattr(mod, "requires", lambda c: [])(cfg)])
            continue
        if not (run.is_done(key, h) or _legacy_done(cfg, run, key)):  # other settings: said first
            out[key] = _reason(_why_run(run, key, h, False, mod), key)
            root[key] = key
            continue
        read = getattr(mod, "read_steps", lambda c, r: [n for n, _ in getattr(mod, "requires", lambda c: [])(c)])
        bad = [need for need in read(cfg, st) if run.status(need) is not None and out.get(need) is not None]
        stands = [need for need in bad if need in handoff_ok[key in TRAINING_SIDE]]  # (what it reads of them does)
        if len(stands) < len(bad):
            first = root.get(bad[0], bad[0])
            out[key] = f"made from {bad[0]}'s outputs, which do not stand ({first}: {out[first]})"
            root[key] = first
            keep_handoff((name, mod, h, key, None), bad)
            continue
        verb, line = step_decision(cfg, run, (name, mod, h, key, None))
        out[key] = None if verb == "skip" else _reason(line, key)
        if out[key] is not None:
            root[key] = key
            keep_handoff((name, mod, h, key, None), bad)  # (its test split's part alone stale, say)
    return out


def handoffs_standing(cfg: RunConfig, run: RunDir, entry: tuple, will_run: dict) -> dict[str, bool]:
    """For a step said to run in a dry run (or the checks before a run): whether what the training steps
    (``train_handoff_stands``) and the other steps (``handoff_stands``) read of it stands (:func:`handoff_stands`)."""
    return {"train_handoff_stands": handoff_stands(cfg, run, entry, will_run, training=True),
            "handoff_stands": handoff_stands(cfg, run, entry, will_run, training=False)}


def handoff_stands(cfg: RunConfig, run: RunDir, entry: tuple, will_run: dict | None = None,
                   training: bool = True) -> bool:
    """Whether what the training steps read of a finished step (its ``train_handoff``; ``training=False``: what
    every step reads, its ``handoff``) stands although the step is made again or does not stand: the step can tell
    what it would record now (``handoff_now``: make_cam, from the images and checkpoint of now), or says that this is
    made from the training splits alone (``handoff_from_training``: eval_cam's choices), finished with these
    settings, what it read of its inputs' training part stands, and the manifest changed outside the training splits
    only (a test label or mask fixed). A stopped step is judged by the finished record it replaced (its run carries
    that record's handoff on). ``will_run``: in a dry run, the steps said to run before it."""
    name, mod, h, key, off = entry
    st = run.status(key) or {}
    prior = carried.get("record") if isinstance(carried := st.get("prior_handoff"), dict) else None
    if st.get("state") in ("running", "failed") and isinstance(prior, dict):  # stopped: judged by the record it
        run, st = run.with_record(key, prior), prior  # replaces (a run of it carries that record's handoff on)
    field = "train_handoff" if training else "handoff"
    exact = hasattr(mod, "handoff_now")
    if off or st.get(field) is None or not (exact or getattr(mod, "handoff_from_training", lambda c: False)(cfg)):
        return False
    if not run.is_done(key, h) or inputs_newer(cfg, run, mod, key, True) or _clicks_stale(cfg, run, name, key):
        return False
    if _weights_stale(run, key) or (will_run is not None and _runs_before(cfg, mod, will_run, True)):
        return False
    if hasattr(mod, "stale_reason") and mod.stale_reason(cfg, run):
        return False
    if exact:  # (what it would record now, where that can be told before it runs)
        return mod.handoff_now(cfg, run, training) == st[field]
    return _manifest_stale(cfg, run, name, key, training_only=True) is None


def _reason(line: str, key: str) -> str:
    """The why of a decision's log line (``[redo] key: why; made again``)."""
    return line[7:].removeprefix(key).removeprefix(": ").removesuffix("; made again")


# the metrics file each evaluation step writes (metrics/<tag>.json), by status record
METRICS_STEPS = {"cam": "eval_cam", "sem_seg": "eval_sem_seg", "seg": "eval_seg",
                 "seg_supervised": "eval_seg_supervised"}


def steps_standing_or_none(cfg: RunConfig | None, run_path: Path) -> dict[str, str | None]:
    """:func:`steps_standing`, or {} when it cannot be told (no config; a record or step module that fails): a report
    or closing table is still written, it just cannot say."""
    if cfg is None:
        return {}
    try:
        return steps_standing(cfg, RunDir(run_path, cfg))
    except Exception:
        return {}


def metrics_standing(cfg: RunConfig | None, run_path: Path, standing: dict[str, str | None] | None = None
                     ) -> dict[str, str]:
    """For each metrics file (``cam``, ``sem_seg``, ``seg``, ``seg_supervised``) that does not follow from ``cfg``
    (the run folder's config.yaml) and the folder: why not (:func:`steps_standing` of the step that wrote it, or
    ``standing`` when given). Empty when all stand, or when that cannot be told."""
    if standing is None:
        standing = steps_standing_or_none(cfg, run_path)
    return {tag: f"{step}: {why}" for tag, step in METRICS_STEPS.items()
            if (why := standing.get(step)) is not None and (Path(run_path) / "metrics" / f"{tag}.json").is_file()}


def _runs_before(cfg: RunConfig, mod, will_run: dict, training: bool = False) -> str | None:
    """In a dry run: why a finished step would be made again because a step it reads runs before it (a real run
    sees that from the new outputs' times, :func:`inputs_newer`), unless what it reads of that step stands
    (:func:`handoff_stands`; ``training``: it reads the training part of their outputs alone)."""
    side = "train_handoff_stands" if training else "handoff_stands"
    will_run = {k: v for k, v in will_run.items() if not (v or {}).get(side)}
    for need, _ in getattr(mod, "requires", lambda c: [])(cfg):
        if need in will_run:
            return f"{need} runs before it, so it would be made again"
    # a label source decided at run time (best_on_train, pseudo_or_cam): made again when the one it read, or the
    # scores that pick it, are
    either = [need for need, _ in getattr(mod, "requires_any", lambda c: [])(cfg) + getattr(mod, "prefers",
                                                                                             lambda c: [])(cfg)
              if need in will_run]
    if either:
        return (f"{' and '.join(dict.fromkeys(either))} run(s) before it, and it would be made again if the labels "
                "it reads or picks change")
    return None
