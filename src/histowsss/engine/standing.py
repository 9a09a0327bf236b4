"""Whether each finished step's outputs (and each metrics file) still follow from the config and the folder:
for the report and the run's closing table."""

from __future__ import annotations

from pathlib import Path

from histowsss.config import RunConfig
from histowsss.config.run import digests_held
from histowsss.engine.decisions import (TRAINING_SIDE, handoff_stands, legacy_done, reason_of, step_decision,
                                        stopped_how, why_run_line)
from histowsss.engine.earlier_records import with_kept
from histowsss.engine.run_dir import RunDir
from histowsss.engine.step_plan import step_plan


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
            out[key] = f"did not finish ({stopped_how(st)}, started {st.get('started', '?')}" + (
                f", with other settings: {diff})" if diff else ")")
            root[key] = key
            keep_handoff((name, mod, h, key, None), [n for n, _ in getattr(mod, "requires", lambda c: [])(cfg)])
            continue
        if not (run.is_done(key, h) or legacy_done(cfg, run, key)):  # other settings: said first
            out[key] = reason_of(why_run_line(run, key, h, False, mod), key)
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
        out[key] = None if verb == "skip" else reason_of(line, key)
        if out[key] is not None:
            root[key] = key
            keep_handoff((name, mod, h, key, None), bad)  # (its test split's part alone stale, say)
    return out


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
    except Exception as e:  # (said, so that a broken record or module does not hide the stale marks unnoticed)
        import warnings

        warnings.warn(f"{run_path}: could not tell which results follow from config.yaml ({type(e).__name__}: {e}); "
                      "numbers are shown without stale marks", UserWarning, stacklevel=2)
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
