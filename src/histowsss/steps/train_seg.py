"""Step train_seg: the final segmentation network, trained on the pseudo-masks (or ground truth: the upper bound).

Labels (``train_seg.labels``): ``pseudo/<name>.png`` from make_sem_seg_labels (class ids at the data.image_scale
resolution, 255 = ignore), eval_cam's label-gated CAM labels (``cam``), or pseudo when available else CAM
(``pseudo_or_cam``). ``train_seg.supervised: true`` trains the same network on the ground-truth masks instead;
its outputs are named ``seg_supervised`` so that they sit beside the weakly supervised ones in one run folder.

Training: random square crops (scale jitter, HED stain jitter, dihedral flips/rotations) of the train (+ val)
images, a noise-robust loss (OEEM weighting by default, see :func:`histowsss.models.segnet.seg_loss`), AdamW with
linear warm-up + cosine decay, one JSON line per epoch in ``logs/train_<tag>.jsonl``, a checkpoint per epoch for
resuming, ``checkpoints/<tag>.safetensors`` at the end. Runs unchanged under ``torchrun`` (DDP, see
:mod:`histowsss.engine.distributed`): every rank trains on its shard of the crops, rank 0 writes the files.
``train_seg.members`` > 1 trains a seed ensemble, one member after another (``<tag>_m1``, ...; a finished member is
kept when a killed run resumes), which :func:`histowsss.steps.segnet_io.load_segnet` returns as one averaging network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from histowsss.config import AugmentConfig, RunConfig
from histowsss.data.io import resize
from histowsss.data.loading import load_image
from histowsss.data.manifest import Sample
from histowsss.data.masks import IGNORE
from histowsss.data.transforms import Normalizer, dihedral, hed_jitter
from histowsss.engine.atomic import write_text
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.steps.common import samples_for
from histowsss.steps.seg_labels import folder_fingerprint, label_source, load_labels, train_splits
from histowsss.steps.segnet_io import build_from_meta, checkpoint_path, network_input

if TYPE_CHECKING:  # (imported where they are used: planning a run reads this module without torch; only runs
    # that synthesise need skimage's drawing)
    import torch

    from histowsss.data.synthesis import RegionPools
    from histowsss.engine.distributed import DistContext

STEP = "train_seg"


# ----------------------------------------------------------------------------------------------- naming, hashes
def tag(cfg: RunConfig) -> str:
    """'seg' (weak labels) or 'seg_supervised' (ground truth): the stem of this network's files."""
    return "seg_supervised" if cfg.train_seg.supervised else "seg"


def status_name(cfg: RunConfig) -> str:
    """The status record of this network: ``train_seg`` (weak) or ``train_seg_supervised`` (the upper bound), so
    that both networks of one run folder stay finished side by side."""
    return f"{STEP}_supervised" if cfg.train_seg.supervised else STEP


def _upstream_hash(cfg: RunConfig) -> str:
    ts = cfg.train_seg
    if ts.supervised:
        return "ground_truth"
    if ts.labels == "cam":
        from histowsss.steps import eval_cam

        return "cam:" + eval_cam.config_hash(cfg)
    if ts.labels == "folder":
        return "folder:" + folder_fingerprint(cfg)
    from histowsss.steps import eval_cam, make_sem_seg_labels

    pseudo = "pseudo:" + make_sem_seg_labels.config_hash(cfg)
    if ts.labels == "pseudo":
        return pseudo
    # pseudo_or_cam / best_on_train may train on eval_cam's CAM labels (best_on_train picks by eval_sem_seg's scores of
    # the two, which depend on nothing else): a change of eval_cam's settings is a change of this step's input
    return f"{pseudo}|cam:{eval_cam.config_hash(cfg)}"


def stale_reason(cfg: RunConfig, run: RunDir) -> str | None:
    """Why a finished weak network must be trained again although its hash matches: ``best_on_train`` /
    ``pseudo_or_cam`` chose its labels from what the folder held then (CAM labels before IRN's pseudo-masks were
    made, say), and would choose others now. None when it stands."""
    ts = cfg.train_seg
    if ts.supervised or ts.labels not in ("best_on_train", "pseudo_or_cam"):
        return None
    st = run.status(status_name(cfg)) or {}
    was = st.get("label_source")
    try:
        now = label_source(cfg, run)
    except StepError:  # its sources are not all finished: nothing better to train on
        return None
    if was is None:
        return None
    if was != now:
        return f"trained on {was} labels; train_seg.labels={ts.labels} now picks {now} labels"
    for source_step in SOURCE_STEPS.get(was, []):  # the labels it read were replaced (training images' part)
        if run.made_again_after(source_step, status_name(cfg), training=True):
            return f"its {was} labels ({source_step}) were made again after it was trained"
    return None


# the steps whose outputs a label source is made of (CAM labels: eval_cam's choice on make_cam's CAMs)
SOURCE_STEPS = {"pseudo": ["make_sem_seg_labels"], "cam": ["eval_cam", "make_cam"]}


# settings only the weak labels read (their source, the filters on them, the loss against their noise): the network
# trained on the ground-truth masks does not, so changing them leaves a finished upper bound finished
WEAK_LABEL_SETTINGS = ("labels", "label_dir", "patch_veto", "boundary_ignore", "loss", "loss_warmup_epochs", "gce_q",
                       "synthetic_fraction")


def config_hash(cfg: RunConfig) -> str:
    """Hash of this step's inputs: the label source's own hash + the data and train_seg sections (+ points, the
    clicks in the weak labels). The supervised network's hash leaves out the weak-label settings and the clicks."""
    if not cfg.train_seg.supervised:
        return _hash(f"{_upstream_hash(cfg)}|{cfg.step_hash('data', 'train_seg', 'points')}")
    fields = type(cfg.train_seg).model_fields
    ts = cfg.train_seg.model_copy(update={k: fields[k].get_default(call_default_factory=True)
                                          for k in WEAK_LABEL_SETTINGS})
    return _hash(f"{_upstream_hash(cfg)}|{cfg.model_copy(update={'train_seg': ts}).step_hash('data', 'train_seg')}")


def legacy_supervised_hash(cfg: RunConfig) -> str:
    """The hash the supervised network of ``cfg`` (``train_seg.supervised: true``) was recorded with before it left
    out the weak-label settings (up to stop 33): a finished upper bound of these settings is adopted, not retrained
    (:func:`histowsss.engine.earlier_records.adopt_legacy_records`)."""
    return _hash(f"{_upstream_hash(cfg)}|{cfg.step_hash('data', 'train_seg', 'points')}")


def _hash(payload: str) -> str:
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def requires(cfg: RunConfig) -> list[tuple[str, str]]:
    """The finished steps (status record, config hash) this step reads, where the labels say which before the run:
    checked before a run starts (pseudo_or_cam / best_on_train decide from the folder when the step runs)."""
    from histowsss.steps import eval_cam, make_sem_seg_labels

    ts = cfg.train_seg
    if ts.supervised:
        return []
    if ts.labels == "pseudo":
        return [("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg))]
    if ts.labels == "cam":  # (eval_cam's choice made on the CAMs, which it reads too)
        from histowsss.steps import make_cam

        return [("eval_cam", eval_cam.config_hash(cfg)), ("make_cam", make_cam.config_hash(cfg))]
    return []


def requires_any(cfg: RunConfig) -> list[tuple[str, str]]:
    """Steps of which one finished is enough: pseudo_or_cam / best_on_train train on IRN's pseudo-masks or, without
    them, on eval_cam's CAM labels (which of the two is decided from the folder when the step runs)."""
    from histowsss.steps import eval_cam, make_sem_seg_labels

    ts = cfg.train_seg
    if ts.supervised or ts.labels not in ("pseudo_or_cam", "best_on_train"):
        return []
    return [("eval_cam", eval_cam.config_hash(cfg)), ("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg))]


def read_steps(cfg: RunConfig, record: dict) -> list[str]:
    """The steps whose outputs the finished ``record`` of this network was made from: the label source it read
    (its ``label_source``), and for best_on_train the scores that picked it."""
    ts = cfg.train_seg
    if ts.supervised:
        return []
    source = SOURCE_STEPS.get(record.get("label_source"), [])
    picked = ["eval_sem_seg"] if ts.labels == "best_on_train" else []
    return list(dict.fromkeys([n for n, _ in requires(cfg)] + source + picked))


def prefers(cfg: RunConfig) -> list[tuple[str, str]]:
    """The steps whose outputs decide the labels of pseudo_or_cam / best_on_train when they finished with this
    config (IRN's pseudo-masks; for best_on_train also eval_sem_seg, whose scores choose): a run that starts after
    them (``--from``) while the folder holds them with other settings or unfinished is refused before it starts,
    instead of choosing the labels as if they had never run."""
    from histowsss.steps import eval_sem_seg, make_sem_seg_labels

    ts = cfg.train_seg
    if ts.supervised or ts.labels not in ("pseudo_or_cam", "best_on_train"):
        return []
    out = [("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg))]
    if ts.labels == "best_on_train":
        out.append(("eval_sem_seg", eval_sem_seg.config_hash(cfg)))
    return out


# ------------------------------------------------------------------------------------------------------- crops
def epoch_plan(sizes: list[tuple[int, int]], crop: int, per_image: int, scale_range: tuple[float, float],
               seed: int, epoch: int, synthetic: float = 0.0) -> list[tuple[int, int, int, int, int]]:
    """(image, y, x, source side, aug seed) per crop, shuffled; the same on every rank (seeded by epoch).

    ``synthetic`` > 0: that fraction of the crops (drawn from a stream of their own, so the others stay as without)
    become synthetic ones, marked by image -1 (:mod:`histowsss.data.synthesis`; side drawn as for the others)."""
    rng = np.random.default_rng([seed, epoch])
    lo, hi = scale_range

    def draw_side(r: np.random.Generator) -> int:
        s = math.exp(r.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
        return max(8, int(round(crop / s)))

    plan = []
    for i, (h, w) in enumerate(sizes):
        for _ in range(per_image):
            side = draw_side(rng)
            y = int(rng.integers(0, max(h, side) - side + 1))
            x = int(rng.integers(0, max(w, side) - side + 1))
            plan.append((i, y, x, side, int(rng.integers(2**31))))
    order = rng.permutation(len(plan))
    plan = [plan[j] for j in order]
    if synthetic > 0:
        srng = np.random.default_rng([seed, epoch, 1])
        for j in srng.choice(len(plan), int(round(synthetic * len(plan))), replace=False):
            plan[j] = (-1, 0, 0, draw_side(srng), int(srng.integers(2**31)))
    return plan


def make_crop(img: np.ndarray, lab: np.ndarray, y: int, x: int, side: int, crop: int, aug, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Cut a ``side`` square at (y, x) (padding small images: reflect / ignore), resize to ``crop``, augment."""
    h, w = lab.shape
    if h < side or w < side:
        ph, pw = max(0, side - h), max(0, side - w)
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")
        lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=IGNORE)
    im, lb = img[y : y + side, x : x + side], lab[y : y + side, x : x + side]
    if side != crop:
        im = resize(np.ascontiguousarray(im), crop / side, nearest=False)
        lb = resize(np.ascontiguousarray(lb), crop / side, nearest=True)
        im, lb = im[:crop, :crop], lb[:crop, :crop]
    rng = np.random.default_rng(seed)
    im = hed_jitter(im, rng, aug.hed_jitter)
    rot = int(rng.integers(4)) if aug.rot90 else 0
    k = rot + (4 if (aug.flips and rng.random() < 0.5) else 0)
    return dihedral(im, k), dihedral(lb, k)


def _crop(c: tuple[int, int, int, int, int], images: list[np.ndarray], labels: list[np.ndarray],
          pools: RegionPools | None, crop: int, aug: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """The crop of plan entry ``c``: cut from its image, or (image -1) synthesised from ``pools``."""
    if c[0] < 0:
        from histowsss.data.synthesis import synthesize

        img, lab = synthesize(images, pools, c[3], np.random.default_rng([c[4], 1]))
        return make_crop(img, lab, 0, 0, c[3], crop, aug, c[4])
    return make_crop(images[c[0]], labels[c[0]], c[1], c[2], c[3], crop, aug, c[4])


# -------------------------------------------------------------------------------------------- status per rank
@contextlib.contextmanager
def rank_step(run: RunDir, ctx: DistContext, step: str, h: str, overwrite: bool) -> Iterator[dict]:
    """``run.step`` on rank 0; on other ranks the same refusal check and no writes."""
    if ctx.is_main:
        with run.step(step, h, overwrite=overwrite) as info:
            yield info
        return
    st = run.status(step)
    if st and st.get("state") == "done" and not overwrite and st.get("config_hash") == h:
        raise StepError(f"{step} already finished in {run.path}; pass --overwrite to redo it")
    yield {}


# ---------------------------------------------------------------------------------------------------- training
def run(cfg: RunConfig, run: RunDir, overwrite: bool = False) -> dict:
    """Train; writes checkpoints/<tag>.safetensors (+ .json metadata) and logs/train_<tag>.jsonl."""
    from histowsss.engine.distributed import init_distributed

    h = config_hash(cfg)
    ctx = init_distributed(cfg.device)
    try:
        ctx.check_shared_folder(run.path)
        ctx.check_same(h, f"{status_name(cfg)} settings (settings hash {h})")
        with rank_step(run, ctx, status_name(cfg), h, overwrite) as info:
            return fit(cfg, run, ctx, h, overwrite, info)[0]
    finally:
        ctx.close()


def fit(cfg: RunConfig, run: RunDir, ctx: DistContext, h: str, overwrite: bool, info: dict,
        samples: list[Sample] | None = None) -> tuple[dict, torch.nn.Module]:
    """The training loop of :func:`run` (inside its status context): returns (metadata, trained model).

    ``samples`` replaces the images of ``train_seg.splits`` (model selection on a held-out part of them:
    ``bench/seg_schedule.py``); the run's files are written as usual, so pass a scratch run folder then.
    """
    from histowsss.engine.checkpoints import save_weights
    from histowsss.engine.distributed import unwrap

    ts, data = cfg.train_seg, cfg.data
    t_ = tag(cfg)
    source = label_source(cfg, run)
    samples = samples if samples is not None else samples_for(cfg, train_splits(cfg))
    if not samples:
        raise StepError(f"no training images: no manifest row has split in {train_splits(cfg)}")
    labels = load_labels(cfg, run, samples, source)
    images: list[np.ndarray] = []
    for s, lab in zip(samples, labels):
        img = load_image(s.image, data)
        if img.shape[:2] != lab.shape:
            raise StepError(f"{s.name}: label map {lab.shape[1]}x{lab.shape[0]} ({source}) differs from the image "
                            f"{img.shape[1]}x{img.shape[0]} at data.image_scale {data.image_scale}; re-make the labels")
        images.append(img)
    n_classes = len(data.classes.names)
    bad = sorted({int(v) for lab in labels for v in np.unique(lab) if v >= n_classes and v != IGNORE})
    if bad:
        raise StepError(f"{source} labels hold values {bad[:5]} that are not class ids (0..{n_classes - 1} or 255)")

    pools = None
    if ts.synthetic_fraction > 0 and not ts.supervised:
        pools = _synthesis_pools(cfg, samples, images)
        info.update(synthetic_regions={data.classes.names[c]: n for c, n in pools.counts().items()})

    n_members = ts.members
    t_start = time.time()
    models, tags = [], [member_tag(t_, k) for k in range(n_members)]
    if overwrite and ctx.is_main:  # start over: a kill and a plain re-run must not find the networks replaced here
        for mt in tags:  # (those of these settings; another's stays until a new one is written: engine/kept_records)
            meta_path = checkpoint_path(run.path, mt).with_suffix(".json")
            try:
                other = json.loads(meta_path.read_text()).get("config_hash") != h
            except (OSError, ValueError, AttributeError):
                other = False
            if not other:
                checkpoint_path(run.path, mt).unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
    ctx.barrier()
    for k, mt in enumerate(tags):
        base_meta = {"tag": mt, "member": k, "members": n_members, "member_tags": tags, "seed": ts.seed + k,
                     "classes": list(data.classes.names), "architecture": ts.architecture, "encoder": ts.encoder,
                     "decoder_channels": ts.decoder_channels, "encoder_model_kwargs": ts.encoder_model_kwargs,
                     "encoder_weights": _encoder_weights_record(cfg), "encoder_frozen": ts.freeze_encoder,
                     "label_source": source,
                     "loss": "ce" if ts.supervised else ts.loss, "supervised": ts.supervised, "config_hash": h,
                     "epochs": ts.epochs, "world_size": ctx.world_size, "train_images": len(samples),
                     "input": network_input(cfg)}
        done = None if overwrite else _finished_member(cfg, run.path, mt, h)
        if done is not None:  # a member finished before a kill: keep it, train the next one
            meta, model = done
        else:
            meta, model = _train_member(cfg, run, ctx, h, overwrite, images, labels, source, mt, ts.seed + k,
                                        f"{k + 1}/{n_members}" if n_members > 1 else "", pools)
            meta = {**base_meta, **meta}
            if ctx.is_main:
                save_weights(checkpoint_path(run.path, mt), unwrap(model), meta)
            ctx.barrier()
        models.append(unwrap(model))
    meta = json.loads(checkpoint_path(run.path, t_).with_suffix(".json").read_text()) if ctx.is_main else meta
    info.update(outputs=[f"checkpoints/{mt}{ext}" for mt in tags for ext in (".safetensors", ".json")]
                + [f"logs/train_{mt}.jsonl" for mt in tags],
                tag=t_, members=n_members, label_source=source, train_seconds=round(time.time() - t_start, 2),
                world_size=ctx.world_size)
    if n_members == 1:
        return meta, models[0]
    from histowsss.models.segnet import SegEnsemble

    return meta, SegEnsemble(models)


def _synthesis_pools(cfg: RunConfig, samples: list[Sample], images: list[np.ndarray]) -> RegionPools:
    """The single-class regions (patches or images) of the training images that synthetic crops are stitched from
    (a clear StepError when there are too few)."""
    from histowsss.data.synthesis import SynthesisError, single_class_pools

    try:
        pools = single_class_pools(samples, cfg.data, [im.shape[:2] for im in images])
    except (SynthesisError, ValueError) as e:
        raise StepError(f"train_seg.synthetic_fraction: {e}") from None
    names = cfg.data.classes.names
    print("synthetic crops from single-class regions: "
          + ", ".join(f"{names[c]} {n}" for c, n in pools.counts().items()), flush=True)
    return pools


def _encoder_weights_record(cfg: RunConfig) -> dict:
    """What the encoder started from, for the checkpoint's metadata and the export's card: 'imagenet' / 'none', or
    a local file by name and sha256 (its folder stays out: a shared bundle need not show the trainer's paths)."""
    w = cfg.train_seg.encoder_weights
    if w in ("imagenet", "none"):
        return {"source": w}
    return {"source": "file", "name": Path(w).name,
            "sha256_16": cfg.weights_file_digest("train_seg.encoder_weights")}  # its first 16 hex digits


def member_tag(tag_: str, k: int) -> str:
    """File stem of ensemble member ``k``: the network's tag for the first, ``<tag>_m<k>`` for the others."""
    return tag_ if k == 0 else f"{tag_}_m{k}"


def _finished_member(cfg: RunConfig, run_path: Path, mt: str, h: str) -> tuple[dict, torch.nn.Module] | None:
    """(metadata, model) of member ``mt`` when its final checkpoint was written with config hash ``h``, else None."""
    path = checkpoint_path(run_path, mt)
    meta_path = path.with_suffix(".json")
    if not (path.exists() and meta_path.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("config_hash") != h:
        return None
    return meta, build_from_meta(cfg, meta, path)


def _train_member(cfg: RunConfig, run: RunDir, ctx: DistContext, h: str, overwrite: bool, images: list[np.ndarray],
                  labels: list[np.ndarray], source: str, t_: str, seed: int, which: str,
                  pools: RegionPools | None = None) -> tuple[dict, torch.nn.Module]:
    """Train one network (files ``<t_>_last`` / ``<t_>_train_state`` for resuming); returns (metadata, model)."""
    import torch

    from histowsss.engine.checkpoints import load_weights, resume_point, save_resume_point
    from histowsss.engine.device import autocast_bf16, bf16_enabled
    from histowsss.engine.distributed import unwrap
    from histowsss.engine.optim import adamw
    from histowsss.engine.prefetch import auto_threads, prefetch_batches
    from histowsss.models.segnet import build_segnet, seg_loss

    ts, data = cfg.train_seg, cfg.data
    device = ctx.device
    sizes = [lab.shape for lab in labels]
    n_classes = len(data.classes.names)
    torch.manual_seed(seed)
    model = build_segnet(ts, n_classes)
    if ts.freeze_encoder:
        model.freeze_encoder()
    if ts.grad_checkpointing:
        try:
            model.set_grad_checkpointing()
        except ValueError as e:
            raise StepError(str(e)) from None
    model = model.to(device)
    # a pretrained encoder kept frozen is rebuilt from its file on resume: the per-epoch resume point leaves it out
    skip = "net.encoder." if ts.freeze_encoder and ts.encoder_weights != "none" else None
    if ts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    norm = Normalizer(model.mean, model.std)
    loss_kind = "ce" if ts.supervised else ts.loss
    opt = adamw(model.param_groups(ts.lr, ts.encoder_lr_mult), weight_decay=ts.weight_decay, fused=ts.fused_optimizer)
    n_crops = len(images) * ts.crops_per_image
    per_rank = -(-n_crops // ctx.world_size)
    steps_per_epoch = max(1, per_rank // ts.batch_size)
    total = steps_per_epoch * ts.epochs
    warm = int(ts.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warm)) *
                                              0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    ckpt_dir, logs = run.path / "checkpoints", run.path / "logs"
    if ctx.is_main:
        run.sub("checkpoints"), run.sub("logs")
    state_path, last_path = ckpt_dir / f"{t_}_train_state.pt", ckpt_dir / f"{t_}_last.safetensors"
    history: list[dict] = []
    start_epoch = 0
    wf = cfg.weights_file_digest("train_seg.encoder_weights")  # the encoder is built from it: a resume needs the same
    state = resume_point(last_path, state_path, h, overwrite, ctx.is_main, weights_file=wf)
    if state is not None and state.get("world_size", 1) != ctx.world_size:
        if ctx.is_main:
            print(f"train_seg ({t_}): its resume point (epoch {int(state['epoch']) + 1}) was saved by "
                  f"{state.get('world_size', 1)} process(es) and this launch has {ctx.world_size}: the epoch plan and "
                  "batches differ, so training starts over (resume with the same number of processes to go on)",
                  file=sys.stderr)
        state = None
    if state is not None:
        load_weights(Path(state["weights_path"]), model, device="cpu")
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        history = json.loads(state["history"])
    if ctx.distributed and ctx.all_reduce_sum([start_epoch])[0] != start_epoch * ctx.world_size:
        raise StepError(f"ranks disagree on the epoch to resume from ({run.path} must be on a file system that every "
                        "rank sees); pass --overwrite to start over")
    ddp = ctx.wrap(model)
    use_amp = bf16_enabled(device, ts.amp, ts.cpu_amp, "train_seg.cpu_amp", warn=ctx.is_main)
    threads = auto_threads(ts.loader_threads)
    label = f"train_seg ({t_}{', member ' + which if which else ''})"
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), disable=not ctx.is_main) as bar:
        task = bar.add_task(label, total=total, completed=start_epoch * steps_per_epoch, stats="")
        # (rank 0's running mean: the epoch line's loss is the mean over every rank's crops)
        loss_name = "rank-0 loss" if ctx.distributed else "loss"
        for epoch in range(start_epoch, ts.epochs):
            # torch's own draws (dropout, e.g. DeepLabV3+'s ASPP) from the epoch's seed, the same on every rank: a run
            # resumed after a kill trains as one never stopped
            torch.manual_seed(seed * 1_000_003 + epoch)
            ddp.train()
            t0 = time.time()
            kind = "ce" if epoch < ts.loss_warmup_epochs else loss_kind
            plan = ctx.shard(epoch_plan(sizes, ts.crop_size, ts.crops_per_image, ts.augment.scale_range,
                                        seed, epoch, synthetic=ts.synthetic_fraction if pools is not None else 0.0))
            # loss * steps, steps, then correct, valid pixels and label-probability sum of all crops, then of the
            # synthetic ones (exact masks), so that the agreement logged is with the weak labels alone
            sums = np.zeros(8)
            chunks = [plan[b * ts.batch_size : (b + 1) * ts.batch_size] for b in range(steps_per_epoch)]
            batches = prefetch_batches(chunks, lambda c: _crop(c, images, labels, pools, ts.crop_size, ts.augment),
                                       threads)
            for chunk, crops in zip(chunks, batches):
                x_t = norm(torch.from_numpy(np.stack([c[0] for c in crops])).to(device))
                if ts.channels_last:
                    x_t = x_t.contiguous(memory_format=torch.channels_last)
                y_t = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64)).to(device)
                with autocast_bf16(device, use_amp):
                    logits = ddp(x_t)
                loss = seg_loss(logits, y_t, kind, q=ts.gce_q)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    valid = y_t != IGNORE
                    lg = logits.detach().float()
                    safe = torch.where(valid, y_t, torch.zeros_like(y_t))
                    p_lab = torch.softmax(lg, 1).gather(1, safe[:, None])[:, 0]
                    hit = (lg.argmax(1) == y_t) & valid
                    batch = [float(loss.detach()), 1, float(hit.sum()), float(valid.sum()), float(p_lab[valid].sum())]
                    if pools is not None and any(e[0] < 0 for e in chunk):  # (plan entries: image -1 = synthetic)
                        syn = torch.tensor([e[0] < 0 for e in chunk], device=device)[:, None, None] & valid
                        batch += [float((hit & syn).sum()), float(syn.sum()), float(p_lab[syn].sum())]
                    else:
                        batch += [0.0, 0.0, 0.0]
                    sums += batch
                bar.update(task, advance=1, stats=f"epoch {epoch + 1}/{ts.epochs} {loss_name} {sums[0] / sums[1]:.4f}")
            g = ctx.all_reduce_sum(sums.tolist())
            ctx.sync_buffers(ddp)  # identical BatchNorm statistics on every rank before saving
            secs = time.time() - t0
            rec = {"epoch": epoch, "loss": g[0] / max(g[1], 1), "loss_kind": kind,
                   "label_acc": (g[2] - g[5]) / max(g[3] - g[6], 1),
                   "label_prob": (g[4] - g[7]) / max(g[3] - g[6], 1),
                   **({"synthetic_acc": g[5] / max(g[6], 1)} if g[6] else {}),
                   "lr": opt.param_groups[-1]["lr"], "seconds": round(secs, 2),
                   "crops": sum(len(c) for c in chunks) * ctx.world_size,  # fewer than a batch: what was drawn
                   "crops_per_s": round(sum(len(c) for c in chunks) * ctx.world_size / max(secs, 1e-9), 2)}
            history.append(rec)
            if ctx.is_main:
                write_text(logs / f"train_{t_}.jsonl", "".join(json.dumps(r) + "\n" for r in history))
                bar.console.print(f"epoch {epoch + 1}: loss {rec['loss']:.4f} ({kind}) agreement with {source} "
                                  f"labels {100 * rec['label_acc']:.1f}%"
                                  + (f" (synthetic crops {100 * rec['synthetic_acc']:.1f}%)" if "synthetic_acc" in rec
                                     else "") + f" {rec['crops_per_s']} crops/s")
                save_resume_point(last_path, state_path, unwrap(ddp),
                                  {"config_hash": h, "epoch": epoch, "world_size": ctx.world_size,
                                   "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                   "history": json.dumps(history), "weights_file": wf}, skip_prefix=skip)
            ctx.barrier()
    meta = {"mean": list(model.mean), "std": list(model.std), "final": history[-1] if history else None}
    return meta, unwrap(ddp)
