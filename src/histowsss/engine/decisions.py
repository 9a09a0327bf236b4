"""What a run does with each step, and why: skip (finished with these settings and inputs), make again (an input,
the manifest, clicks or a weights file changed since it ran), go on after a stop, or start over; and whether
what later steps read of a step made again still stands (its handoff)."""

from __future__ import annotations

from histowsss.config import RunConfig
from histowsss.engine.earlier_records import legacy_match
from histowsss.engine.run_dir import WEIGHTS_FILE_STEPS, RunDir
from histowsss.steps.registry import PIPELINE, step_module

# the steps that read only the training splits' rows of the manifest (the others read every split; eval_sem_seg
# scores the pseudo-masks of the IRN's training images)
TRAINING_SIDE = ("train_cam", "cam_to_ir_label", "train_irn", "make_sem_seg_labels", "make_ins_seg_labels",
                 "eval_sem_seg", "train_seg", "train_seg_supervised")


# the steps that read the IRN's images (ir_label.splits, default train + val)
IRN_SIDE = ("cam_to_ir_label", "train_irn", "make_sem_seg_labels", "make_ins_seg_labels", "eval_sem_seg")


# the steps that open image files (cam_to_ir_label too with ir_label.crf); the others read what these made of them
IMAGE_READERS = ("train_cam", "make_cam", "train_irn", "make_sem_seg_labels", "train_seg", "train_seg_supervised",
                 "eval_seg", "eval_seg_supervised")


def is_finished(cfg: RunConfig, run: RunDir, key: str, h: str) -> bool:
    """Whether step ``key`` finished with hash ``h``: its record, or one of an earlier hash rule
    (:func:`legacy_done`). (Kept records to restore: ``run`` is then
    :func:`~histowsss.engine.earlier_records.with_kept`'s view.)"""
    return run.is_done(key, h) or legacy_done(cfg, run, key)


def legacy_done(cfg: RunConfig, run: RunDir, key: str) -> bool:
    """True when step ``key`` finished with these settings under an earlier hash rule (adopted when the run starts,
    :func:`~histowsss.engine.earlier_records.adopt_legacy_records`)."""


    return key in PIPELINE and legacy_match(cfg, run, key, step_module(key)) is not None


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


def clicks_stale(cfg: RunConfig, run: RunDir, name: str, key: str) -> str | None:
    """Why a finished step the clicks act in (``points.use_in``) must be made again: its clicks were changed since
    it ran (the steps after it follow as their input is made again); None otherwise."""
    from histowsss.data.points import CLICK_STEPS, uses_points

    if name not in {CLICK_STEPS[w] for w in CLICK_STEPS if uses_points(cfg, w)}:
        return None
    st = run.status(key) or {}
    if run.clicks_changed(st):
        return "the clicks changed since it ran (points.file or the manifest's points cells); made again"
    return None


def manifest_stale(cfg: RunConfig, run: RunDir, name: str, key: str, training_only: bool = False) -> str | None:
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
            return (f"an image file was replaced since it ran ({_named(run, then)}same name, other contents or "
                    f"unreadable; {cfg.data.manifest}); made again")
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
        splits = (cfg.training_side_splits() if part else None)
        return (f"{'a training' if part else 'an'} image file was replaced since it ran ({_named(run, then, splits)}"
                f"same name, other contents or unreadable; {cfg.data.manifest}); made again")
    if name in IRN_SIDE:  # (ir_label.splits may name a split the other training steps do not read)
        for key_, what in (("irn_rows", "rows"), ("irn_mask_files", "masks"), ("irn_image_files", "image files")):
            reads = {"irn_rows": True, "irn_mask_files": reads_masks, "irn_image_files": opens_images}[key_]
            if reads and then.get(key_, now[key_]) != now[key_]:
                return (f"the IRN splits' {what} of the manifest changed since it ran (ir_label.splits; "
                        f"{cfg.data.manifest}); made again")
    return None


def _named(run: RunDir, then: dict, splits: set[str] | None = None) -> str:
    """'images a, b and 3 more: ' for the images replaced since the step's record (:meth:`RunDir.replaced_images`),
    or '' when the image set it ran on was not kept."""
    names = run.replaced_images(then.get("image_files"), splits)
    if not names:
        return ""
    return f"{'image' if len(names) == 1 else 'images'} {', '.join(names[:3])}" + (
        f" and {len(names) - 3} more" if len(names) > 3 else "") + ": "


def weights_stale(run: RunDir, key: str) -> str | None:
    """Why a finished step that read a weights file (``WEIGHTS_FILE_STEPS``) must be made again: it changed (same path,
    other contents); None otherwise (also when the file is not there: a step that needs it says so when it runs)."""
    if run.weights_changed(key, run.status(key) or {}):
        return f"the weights file ({WEIGHTS_FILE_STEPS[key]}) changed since it ran; made again"
    return None


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
    if not run.is_done(key, h) or inputs_newer(cfg, run, mod, key, True) or clicks_stale(cfg, run, name, key):
        return False
    if weights_stale(run, key) or (will_run is not None and runs_before(cfg, mod, will_run, True)):
        return False
    if hasattr(mod, "stale_reason") and mod.stale_reason(cfg, run):
        return False
    if exact:  # (what it would record now, where that can be told before it runs)
        return mod.handoff_now(cfg, run, training) == st[field]
    return manifest_stale(cfg, run, name, key, training_only=True) is None


def runs_before(cfg: RunConfig, mod, will_run: dict, training: bool = False) -> str | None:
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


def step_decision(cfg: RunConfig, run: RunDir, entry: tuple, overwrite: bool = False,
                  will_run: dict | None = None) -> tuple[str, str]:
    """What ``run`` does with the plan ``entry`` (:func:`~histowsss.engine.step_plan.step_plan`) and the log line
    that says why: ``off`` (the config leaves it out), ``skip`` (finished with these settings and inputs), ``redo``
    (finished, made again), ``restart`` (a stopped step starts over: an input, the manifest, its clicks or weights
    file changed since it began) or ``run``. ``will_run``: in a dry run, the steps said to run before it (a real
    run sees those from the new outputs' times)."""
    name, mod, h, key, off = entry
    if off:
        return "off", f"[off ] {name}: {off}"
    st = run.status(key)
    if (run.is_done(key, h) or legacy_match(cfg, run, key, mod) is not None) and not overwrite:
        # finished outputs that no longer follow from the folder although the hash matches: an input step was
        # made again after them (--overwrite), or the step itself knows why (train_seg's label choice)
        why = (inputs_newer(cfg, run, mod, key) or clicks_stale(cfg, run, name, key) or weights_stale(run, key)
               or manifest_stale(cfg, run, name, key)
               or (runs_before(cfg, mod, will_run, key in TRAINING_SIDE) if will_run is not None else None)
               or (mod.stale_reason(cfg, run) if hasattr(mod, "stale_reason") else None))
        if why is None:
            return "skip", f"[skip] {key}: finished with this configuration"
        return "redo", f"[redo] {key}: {why}"
    # a stopped step of these settings whose files so far were made from inputs, a manifest, clicks or a weights
    # file as they were then: it starts over instead of mixing them with new ones
    if not overwrite and st is not None and st.get("state") in ("running", "failed") and st.get("config_hash") == h:
        why = (inputs_newer(cfg, run, mod, key) or clicks_stale(cfg, run, name, key)
               or manifest_stale(cfg, run, name, key)
               or (f"the weights file ({WEIGHTS_FILE_STEPS[key]}) changed" if run.weights_changed(key, st) else None)
               or (runs_before(cfg, mod, will_run, key in TRAINING_SIDE) if will_run is not None else None))
        if why is not None:
            why = (why.removesuffix("; made again").removesuffix(", so it would be made again")
                   .replace("after these outputs were made", "after it began"))
            return "restart", f"[run ] {key}: starts over, not from where it stopped ({why})"
    return ("redo" if (st or {}).get("state") == "done" else "run"), why_run_line(run, key, h, overwrite, mod)


def why_run_line(run: RunDir, key: str, h: str, overwrite: bool, mod=None) -> str:
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
            return f"[run ] {key}: starts over (--overwrite; it had stopped, {stopped_how(st)})"
        if st.get("config_hash") == h:
            return f"[run ] {key}: goes on from where it stopped ({stopped_how(st)} at {st.get('started', '?')})"
        diff = run.settings_diff(st, step_hash=step_hash)
        return f"[run ] {key}: starts over (it had stopped with other settings" + (f": {diff}" if diff else "") + ")"
    return f"[run ] {key}"


def stopped_how(st: dict) -> str:
    """How a step that did not finish stopped: ``interrupted`` (Ctrl-C, SIGTERM), ``failed`` (an error) or
    ``running`` (its process was killed hard, or runs now)."""
    if st.get("state") == "failed" and str(st.get("error", "")).startswith(("KeyboardInterrupt", "SystemExit")):
        return "interrupted"
    return str(st.get("state"))


def reason_of(line: str, key: str) -> str:
    """The why of a decision's log line (``[redo] key: why; made again``)."""
    return line[7:].removeprefix(key).removeprefix(": ").removesuffix("; made again")
