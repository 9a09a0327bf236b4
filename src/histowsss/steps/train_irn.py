"""Step train_irn: train IRN's class-boundary and displacement heads from the confident IR labels.

The backbone is frozen (as in IRN), so its multi-level features are computed ONCE per image and per cached
dihedral copy (``train_irn.copies``: identity + horizontal flip by default) and kept in memory as float16;
every epoch then cuts random ``crop_size`` windows (aligned to the largest feature stride) out of the cached
maps and runs only the heads and the pair losses. Images smaller than a crop are mirrored out to the crop
(labels ignore there) before their features are computed, so the heads' GroupNorm sees image-like features, not
zeros it never meets at inference. The reference's random rescaling (0.5-1.5) would need the backbone on every
batch; it is dropped.

Writes ``checkpoints/irn.safetensors`` (heads only; the backbone comes from the config), ``logs/train_irn.jsonl``
(losses per epoch) and, after every epoch, ``checkpoints/irn_last.safetensors`` + ``irn_train_state.pt`` so
that a killed run resumes at the next epoch.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn, track

from histowsss.config import DataConfig, RunConfig, TrainIrnConfig
from histowsss.data.loading import load_image
from histowsss.data.manifest import Sample
from histowsss.data.transforms import Normalizer, dihedral, mirror_pad
from histowsss.engine.atomic import write_text
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.steps import cam_to_ir_label
from histowsss.steps.irn_common import STRIDE, build_irn, gate_sections, irn_path, irn_samples, read_png

if TYPE_CHECKING:
    import torch

STEP = "train_irn"
# dihedral transform indices (histowsss.data.transforms.dihedral): identity, horizontal flip, then rotations
COPY_ORDER = (0, 4, 2, 6, 1, 5, 3, 7)


def config_hash(cfg: RunConfig) -> str:
    """Hash of the config sections this step depends on."""
    return cfg.step_hash("data", "backbone", "train_cam", "make_cam", "ir_label", "points", "train_irn",
                         *gate_sections(cfg))


def requires(cfg: RunConfig) -> list[tuple[str, str]]:
    """The finished steps (status record, config hash) this step reads: checked before a run starts."""
    return [("cam_to_ir_label", cam_to_ir_label.config_hash(cfg))]


def pad_to_multiple(img: np.ndarray, m: int) -> np.ndarray:
    """Edge-pad an image (H, W, ...) at the bottom/right to multiples of ``m`` (so stride-4 cells stay aligned
    under flips and rotations)."""
    h, w = img.shape[:2]
    ph, pw = -h % m, -w % m
    if ph == 0 and pw == 0:
        return img
    return np.pad(img, ((0, ph), (0, pw)) + ((0, 0),) * (img.ndim - 2), mode="edge")


class FeatureCache:
    """Frozen-backbone features (float16) and IR labels of ``copies`` dihedral copies of every image."""

    def __init__(self, model, samples: list[Sample], labels: list[np.ndarray], data: DataConfig, copies: int,
                 normalizer: Normalizer, device: torch.device, min_side: int = 0):
        import torch

        from histowsss.engine.memory import check_cache_fits, image_pixels

        self.items: list[list[tuple[list[torch.Tensor], torch.Tensor]]] = []
        self.reductions = model.reductions
        self.nbytes = 0
        for s, lab in zip(track(samples, description="train_irn: caching backbone features"), labels):
            img = pad_to_multiple(load_image(s.image, data), STRIDE)
            if (img.shape[0] // STRIDE, img.shape[1] // STRIDE) != lab.shape:
                grid = (img.shape[0] // STRIDE, img.shape[1] // STRIDE)
                raise StepError(f"{s.name}: IR label {lab.shape} does not match the image grid {grid}; "
                                "re-run cam_to_ir_label --overwrite")
            img, lab = mirror_to_min_side(img, lab, min_side)
            per = []
            for k in COPY_ORDER[:copies]:
                x = normalizer(torch.from_numpy(np.require(dihedral(img, k), requirements="W"))[None].to(device))
                feats = [f[0].to(torch.float16) for f in model.extract(x)]
                self.nbytes += sum(f.numel() * 2 for f in feats)
                per.append((feats, torch.from_numpy(np.array(dihedral(lab, k), dtype=np.uint8))))
            self.items.append(per)
            if len(self.items) == 1:
                check_cache_fits(STEP, self.nbytes, image_pixels([x.image for x in samples], data.image_scale,
                                                                 min_side), device,
                                 "lower train_irn.copies or data.image_scale, or train on a subset of the images")

    def crop(self, i: int, c: int, cells: int, align: int, rng: np.random.Generator
             ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """A random window of ``cells`` x ``cells`` grid cells (origin a multiple of ``align``) of copy ``c``."""
        import torch.nn.functional as F

        from histowsss.models.irnet import IGNORE

        feats, lab = self.items[i][c]
        gh, gw = lab.shape
        oy = align * int(rng.integers(0, max(0, gh - cells) // align + 1))
        ox = align * int(rng.integers(0, max(0, gw - cells) // align + 1))
        out = []
        for f, r in zip(feats, self.reductions):
            k = r // STRIDE
            n = cells // k
            win = f[:, oy // k : oy // k + n, ox // k : ox // k + n]
            out.append(F.pad(win, (0, n - win.shape[2], 0, n - win.shape[1])))
        lw = lab[oy : oy + cells, ox : ox + cells].long()
        lw = F.pad(lw, (0, cells - lw.shape[1], 0, cells - lw.shape[0]), value=IGNORE)
        return out, lw


def optimise_step(edge: torch.Tensor, dp: torch.Tensor, labels: torch.Tensor, t: TrainIrnConfig,
                  background: int | None,
                  rng: np.random.Generator, opt: torch.optim.Optimizer, sched) -> dict[str, torch.Tensor]:
    """One IRN update: the pair losses (source cells on a random ``pair_step`` phase), backward, optimiser and
    learning-rate schedule steps. Returns the losses."""
    from histowsss.models.irnet import irn_losses

    phase = (int(rng.integers(t.pair_step)), int(rng.integers(t.pair_step)))
    losses = irn_losses(edge, dp, labels, t.radius, background, step=t.pair_step, phase=phase)
    opt.zero_grad(set_to_none=True)
    losses["total"].backward()
    opt.step()
    sched.step()
    return losses


def mirror_to_min_side(img: np.ndarray, lab: np.ndarray, min_side: int) -> tuple[np.ndarray, np.ndarray]:
    """An image (H, W, 3; H, W multiples of STRIDE) smaller than ``min_side`` mirrored out at the bottom/right to
    it, its stride-4 label grid padded with IGNORE to match (nothing is learnt from the mirrored part)."""
    from histowsss.models.irnet import IGNORE

    padded = mirror_pad(img, min_side)
    if padded is img:
        return img, lab
    img = padded
    gh, gw = img.shape[0] // STRIDE, img.shape[1] // STRIDE
    lab = np.pad(lab, ((0, gh - lab.shape[0]), (0, gw - lab.shape[1])), constant_values=IGNORE)
    return img, lab


def load_labels(cfg: RunConfig, run: RunDir, samples: list[Sample]) -> list[np.ndarray]:
    folder = run.path / cam_to_ir_label.label_dir_name(cfg)
    missing = [s.name for s in samples if not (folder / f"{s.name}.png").exists()]
    if missing:
        raise StepError(f"{STEP}: {len(missing)} IR label(s) missing in {folder} (e.g. {', '.join(missing[:3])}); "
                        "re-run cam_to_ir_label --overwrite")
    return [read_png(folder / f"{s.name}.png") for s in samples]


def run(cfg: RunConfig, run: RunDir, overwrite: bool = False) -> dict:
    """Train the IRN heads; writes checkpoints/irn.safetensors and logs/train_irn.jsonl."""
    import torch

    from histowsss.engine.checkpoints import load_weights, resume_point, save_resume_point, save_weights
    from histowsss.engine.device import resolve_device

    t = cfg.train_irn
    h = config_hash(cfg)
    with run.step(STEP, h, overwrite=overwrite) as info:
        run.require("cam_to_ir_label", cam_to_ir_label.config_hash(cfg), STEP)
        samples = irn_samples(cfg)
        labels = load_labels(cfg, run, samples)
        torch.manual_seed(t.seed)
        device = resolve_device(cfg.device)
        model = build_irn(cfg).to(device)  # as irn_common.build_irn_as_trained rebuilds it for inference
        if t.crop_size % model.max_reduction:
            r = model.max_reduction
            raise StepError(f"train_irn.crop_size ({t.crop_size}) must be a multiple of the backbone's largest "
                            f"stride ({r}), e.g. {max(r, t.crop_size // r * r)}")
        cells, align = t.crop_size // STRIDE, model.max_reduction // STRIDE
        norm = Normalizer(model.backbone.mean, model.backbone.std)
        t0 = time.time()
        cache = FeatureCache(model, samples, labels, cfg.data, t.copies, norm, device, min_side=t.crop_size)
        cache_s = time.time() - t0
        bg = cfg.data.classes.background_index  # None: every class is foreground (tissue types)
        params = [p for p in model.head.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        n_crops = len(samples) * t.crops_per_image
        steps_per_epoch = max(1, math.ceil(n_crops / t.batch_size))
        total = steps_per_epoch * t.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - min(s, total - 1) / total) ** 0.9)
        ckpt = run.sub("checkpoints")
        logs = run.sub("logs")
        state_path = ckpt / "irn_train_state.pt"
        history: list[dict] = []
        start_epoch = 0
        wf = cfg.backbone_digest()  # the frozen backbone is rebuilt from this file: a resume must find the same
        state = resume_point(ckpt / "irn_last.safetensors", state_path, h, overwrite, weights_file=wf)
        if state is not None:
            load_weights(Path(state["weights_path"]), model.head)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start_epoch = int(state["epoch"]) + 1
            history = json.loads(state["history"])
        t_train = time.time()
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[stats]}"), TimeRemainingColumn()) as bar:
            task = bar.add_task(STEP, total=total, completed=start_epoch * steps_per_epoch, stats="")
            for epoch in range(start_epoch, t.epochs):
                rng = np.random.default_rng([t.seed, epoch])
                model.train()
                te = time.time()
                order = [(i, int(rng.integers(t.copies))) for i in range(len(samples))
                         for _ in range(t.crops_per_image)]
                order = [order[j] for j in rng.permutation(len(order))]
                sums: dict[str, float] = {}
                n_steps = 0
                for b in range(0, len(order), t.batch_size):
                    crops = [cache.crop(i, c, cells, align, rng) for i, c in order[b : b + t.batch_size]]
                    feats = [torch.stack([cr[0][lv] for cr in crops]).to(device) for lv in range(len(crops[0][0]))]
                    lab = torch.stack([cr[1] for cr in crops]).to(device)
                    edge, dp = model.heads(feats, (cells, cells))
                    losses = optimise_step(edge, dp, lab, t, bg, rng, opt, sched)
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
                    n_steps += 1
                    bar.update(task, advance=1,
                               stats=f"epoch {epoch + 1}/{t.epochs} loss {sums['total'] / n_steps:.4f}")
                rec = {"epoch": epoch, **{k: round(v / max(n_steps, 1), 5) for k, v in sums.items()},
                       "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - te, 2), "crops": len(order)}
                history.append(rec)
                write_text(logs / "train_irn.jsonl", "".join(json.dumps(r) + "\n" for r in history))
                bar.console.print(f"epoch {epoch + 1}: loss {rec.get('total', 0):.4f} (pos {rec.get('pos_aff', 0):.3f} "
                                  f"neg {rec.get('neg_aff', 0):.3f} dp_fg {rec.get('dp_fg', 0):.3f} "
                                  f"dp_bg {rec.get('dp_bg', 0):.3f}) {rec['seconds']} s")
                save_resume_point(ckpt / "irn_last.safetensors", state_path, model.head,
                                  {"config_hash": h, "epoch": epoch, "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict(), "history": json.dumps(history),
                                   "weights_file": wf})
        meta = {"backbone": cfg.backbone.name, "config_hash": h, "epochs": t.epochs, "radius": t.radius,
                "copies": t.copies, "final": history[-1] if history else None}
        save_weights(irn_path(run), model.head, meta)
        info.update(outputs=["checkpoints/irn.safetensors", "checkpoints/irn.json", "logs/train_irn.jsonl"],
                    images=len(samples),
                    cache_seconds=round(cache_s, 2), cache_mb=round(cache.nbytes / 2**20, 1),
                    train_seconds=round(time.time() - t_train, 2), resumed_from_epoch=start_epoch)
        return meta

