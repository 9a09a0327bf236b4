"""The checks made before any step of a run writes anything: each step's inputs finished (or planned before it),
the manifest there and readable, weights files there and networks that build."""

from __future__ import annotations

from pathlib import Path

from histowsss.config import RunConfig
from histowsss.engine.decisions import handoffs_standing, is_finished, step_decision
from histowsss.engine.run_dir import WEIGHTS_FILE_STEPS, RunDir, StepError
from histowsss.steps.registry import PIPELINE, step_module


def _start_from(cfg: RunConfig, run: RunDir, need: str) -> str:
    """The step to start from so that ``need`` can run: ``need``, or the earliest step before it (through what each
    reads, ``requires``) that has not finished with these settings, so that the suggested command runs at once."""
    if need not in PIPELINE:
        return need
    for before, h in getattr(step_module(need), "requires", lambda c: [])(cfg):
        if not is_finished(cfg, run, before, h):
            return min(need, _start_from(cfg, run, before), key=PIPELINE.index)
    return need


def check_inputs(cfg: RunConfig, run: RunDir, plan: list[tuple], overwrite: bool, stop: str | None = None
                 ) -> list[str]:
    """StepError, before anything is written, when a step of ``plan`` that has work to do
    (:func:`~histowsss.engine.decisions.step_decision`: not finished with these settings, or made again as its inputs
    are) reads a step (its ``requires(cfg)``) that
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
                if need in scheduled or is_finished(cfg, run, need, need_h):
                    continue
                first, command = start(need)
                raise StepError(f"{key} needs the outputs of {need}, which {_why_not(run, need)} in {run.path}; start "
                                + ("from it" if first == need else f"from {first}, which it needs in turn")
                                + f": {command}")
            either = getattr(mod, "requires_any", lambda c: [])(cfg)  # one of these is enough (a fallback label source)
            if either and not any(need in scheduled or is_finished(cfg, run, need, need_h) for need, need_h in either):
                names = " or ".join(need for need, _ in either)
                whys = "; ".join(f"{need} {_why_not(run, need)}" for need, _ in either)
                first = min((need for need, _ in either), key=PIPELINE.index)
                raise StepError(f"{key} needs the outputs of {names} ({whys}) in {run.path}; start from "
                                + ": ".join(start(first)))
            for need, need_h in getattr(mod, "prefers", lambda c: [])(cfg):  # a fallback taken silently otherwise
                if need in scheduled or is_finished(cfg, run, need, need_h) or not run.status(need):
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
    if "train_cam" in todo:  # (not 10 s into train_cam: a class no training image carries cannot be learnt)
        from histowsss.data.check import class_coverage

        if unlearnable := class_coverage(cfg.data, samples, str(manifest)):
            raise ManifestError(f"{manifest}: " + "; ".join(p.message for p in unlearnable))
    missing = [s for s in samples if not s.image.exists()]
    if missing:  # (a dry run said "N steps would run"; the run failed at the first image read)
        from histowsss.data.manifest import data_root

        every = len(missing) == len(samples)
        raise StepError(f"{cfg.data.manifest}: {'none of the' if every else f'{len(missing)} of the'} "
                        f"{len(samples)} image file(s) {'is' if every else 'are not'} found, e.g. {missing[0].image}; "
                        f"relative paths are read from {data_root(cfg.data)} ("
                        + ("data.root" if cfg.data.root is not None else "the manifest's folder") + "): fix the "
                        "paths or data.root (`histowsss data check MANIFEST --config CONFIG` lists every problem)")
    lossy = [s.mask for s in samples if s.mask is not None and s.mask.suffix.lower() in (".jpg", ".jpeg")]
    if lossy:  # (data check names each; said here too, since a run may start without it)
        import warnings

        warnings.warn(f"{len(lossy)} mask(s) are JPEG files, e.g. {lossy[0]}: lossy compression changes the mask "
                      "values near every edge (new values, or other classes, along every outline); save masks "
                      "losslessly as PNG (`histowsss data check MANIFEST --config CONFIG` lists them)", UserWarning,
                      stacklevel=2)
    present = {s.split for s in samples}
    scoring = [k for k in ("eval_seg", "eval_seg_supervised") if k in todo]
    if scoring:  # (not after every training step, when eval_seg finds nothing to score)
        from histowsss.steps.eval_seg import eval_splits

        if not present & set(eval_splits(cfg)):
            raise StepError(f"{scoring[0]} has no image to score: no manifest row is in its splits "
                            f"({', '.join(eval_splits(cfg)) or 'none'}; eval_seg.splits, else data.test_splits). Add "
                            "test images (a test split), set eval_seg.splits, or end the run before it (--to "
                            "train_seg)")
    if "eval_cam" in todo and cfg.make_cam.splits is not None:  # eval_cam reads the CAMs of every split
        from histowsss.steps.common import all_splits

        left_out = [sp for sp in all_splits(cfg) if sp in present and sp not in cfg.make_cam.splits]
        if left_out:
            raise StepError(f"make_cam.splits ({', '.join(cfg.make_cam.splits)}) leaves out split(s) "
                            f"{', '.join(left_out)}, whose CAMs eval_cam reads (it scores every split): add them to "
                            "make_cam.splits, or set it to null (every split)")
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
            st and (st.st_size, st.st_mtime_ns), key, cfg.train_irn.crop_size)
    if done in _NETWORKS_CHECKED:  # (`run` plans twice: before its lock, and when it runs; a file is read once)
        return
    try:
        if section == "backbone":
            largest = max(4, check_backbone(cfg.backbone))  # (IRN's levels are at stride 4 or coarser)
            crop = cfg.train_irn.crop_size
            if key in ("train_cam", "train_irn") and crop % largest:  # (train_irn's crops align to it)
                raise StepError(f"train_irn.crop_size ({crop}) must be a multiple of the backbone's largest stride "
                                f"({largest}), e.g. {max(largest, crop // largest * largest)}")
        else:
            check_segnet(cfg.train_seg, len(cfg.data.classes.names))
    except (WeightsError, ValueError) as e:
        raise StepError(f"{key} could not build its network: {e}") from None
    _NETWORKS_CHECKED.add(done)


_NETWORKS_CHECKED: set[tuple] = set()  # the network settings (and weights file) _check_network passed


def _why_not(run: RunDir, need: str) -> str:
    """Why the step ``need`` cannot be read: it has not finished, or finished with settings that differ (named)."""
    st = run.status(need)
    if not st or st.get("state") != "done":
        return "has not finished"
    step_hash = step_module(need).config_hash if need in PIPELINE else None
    return "finished with other settings" + (f" ({d})" if (d := run.settings_diff(st, step_hash=step_hash)) else "")
