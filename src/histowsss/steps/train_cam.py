"""Step train_cam: train the image/patch classifier whose activation maps become CAMs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from histowsss.config import RunConfig
from histowsss.data.crops import fitted_sizes, image_targets, patch_examples, random_crop_examples, training_crop_size
from histowsss.data.manifest import patient_key
from histowsss.data.pairs import pair_examples
from histowsss.data.transforms import Normalizer
from histowsss.engine.atomic import write_text
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.steps.common import build_cam_network, cam_hash, output_classes, samples_for

STEP = "train_cam"


def _class_indices(cfg: RunConfig) -> list[int]:
    return [cfg.data.classes.index(n) for n in output_classes(cfg)]


def config_hash(cfg: RunConfig) -> str:
    """Hash of the config sections this step depends on."""
    return cam_hash(cfg)


def run(cfg: RunConfig, run: RunDir, overwrite: bool = False) -> dict:
    """Train the CAM classifier; writes checkpoints/cam.safetensors and logs/train_cam.jsonl."""
    import torch
    import torch.nn.functional as F

    from histowsss.engine.checkpoints import load_weights, resume_point, save_resume_point, save_weights
    from histowsss.engine.crop_sources import CachedPatchSource, CachedTrunkSource, PixelSource
    from histowsss.engine.device import resolve_device
    from histowsss.engine.diagnostics import accuracy, chance_bce, check_epoch, macro_auc

    tc, data = cfg.train_cam, cfg.data
    h = config_hash(cfg)
    with run.step(STEP, h, overwrite=overwrite) as info:
        torch.manual_seed(tc.seed)
        device = resolve_device(cfg.device)
        samples = samples_for(cfg, data.train_splits)
        if not samples:
            raise ValueError(f"no training images: no manifest row has split in {data.train_splits}")
        from histowsss.data.check import class_coverage

        unlearnable = class_coverage(data, samples, str(data.manifest))
        if unlearnable:  # `data check` says it too; a run would train (and score) a class it can never localise
            raise StepError("; ".join(p.message for p in unlearnable) + f" ({data.manifest})")
        patients = [patient_key(s.patient) for s in samples]
        crop = training_crop_size(data, tc)
        sizes, mirrored = fitted_sizes(samples, data, crop, mirror=tc.small_images == "mirror")
        if mirrored:
            print(f"train_cam: {len(mirrored)} training image(s) smaller than the {crop}-px crop mirrored out to it "
                  f"(train_cam.small_images=mirror): {', '.join(mirrored[:5])}{' ...' if len(mirrored) > 5 else ''}")
            info["mirrored_images"] = len(mirrored)
        min_side = crop if mirrored else 0
        keep = _class_indices(cfg)
        fixed = None
        if data.patches is not None:
            fixed = patch_examples(samples, data, sizes)
            fixed = [type(e)(e.image, e.y, e.x, e.size, e.target[keep]) for e in fixed]
            if not fixed:
                raise StepError(f"no training patch holds a labelled pixel ({data.manifest}): the masks of the "
                                "training images are all ignore (255 / data.mask_ignore_values)")
            targets_all = np.stack([e.target for e in fixed])
            absent = [n for n, k in zip(output_classes(cfg), targets_all.sum(axis=0)) if k == 0]
            if absent:  # labels read off the masks: `class_coverage` cannot see this before the patches are cut
                raise StepError(f"class(es) {', '.join(map(repr, absent))} carried by no training patch (more than "
                                f"{data.patches.min_fraction:.0%} of a patch's labelled pixels, data.patches."
                                f"min_fraction): they cannot be learnt; check the training masks ({data.manifest}), "
                                "lower min_fraction, or remove the class from data.classes.names")
        else:
            img_targets = image_targets(samples, data)[:, keep]
            targets_all = img_targets
        model = build_cam_network(cfg).to(device)
        if cfg.backbone.channels_last:
            model = model.to(memory_format=torch.channels_last)
        norm = Normalizer(model.backbone.mean, model.backbone.std)
        cached = tc.cache_features and model.trunk_units > 0
        if cached and tc.isolate_patches and fixed is not None:
            source = CachedPatchSource(model, samples, fixed, data, tc, norm, device, tc.seed,
                                       cfg.backbone.channels_last)
        elif cached:
            source = CachedTrunkSource(model, samples, data, tc, norm, device, tc.seed, cfg.backbone.channels_last,
                                       sizes=sizes, min_side=min_side)
        else:
            source = PixelSource(samples, data, tc.augment, norm, cfg.backbone.channels_last, min_side=min_side)
        pos = targets_all.mean(axis=0)
        pos_weight = torch.tensor(np.clip((1 - pos) / np.maximum(pos, 1e-6), 0.2, 20.0) if tc.class_balance
                                  else np.ones_like(pos), dtype=torch.float32, device=device)
        opt = torch.optim.AdamW(model.param_groups(tc.lr, tc.backbone_lr_mult), weight_decay=tc.weight_decay)
        n_examples = len(fixed) if fixed is not None else len(samples) * tc.crops_per_image
        if tc.network == "rpnet":
            n_examples *= 2  # every example is followed by its partner
        # the most batches an epoch can take (cached copies batch per scale): the schedule never runs past its end
        steps_per_epoch = source.max_steps(n_examples, tc.batch_size, paired=tc.network == "rpnet")
        total = steps_per_epoch * tc.epochs
        warm = int(tc.warmup_epochs * steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warm)) *
                                                  0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        ckpt_dir = run.sub("checkpoints")
        logs = run.sub("logs")
        state_path = ckpt_dir / "cam_train_state.pt"
        # pretrained (read from a file or package, the same on resume) and frozen whole; a random one is saved
        frozen_whole = model.trunk_units == len(model.backbone.units) and cfg.backbone.weights != "none"
        history: list[dict] = []
        start_epoch = 0
        wf = cfg.backbone_digest()  # the weights file the backbone is built from now (None: package / random)
        state = resume_point(ckpt_dir / "cam_last.safetensors", state_path, h, overwrite,  # --overwrite retrains
                             weights_file=wf)
        if state is not None:
            load_weights(Path(state["weights_path"]), model, device="cpu")
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start_epoch = int(state["epoch"]) + 1
            history = json.loads(state["history"])
        chance = chance_bce(targets_all)
        t_start = time.time()
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[stats]}"), TimeRemainingColumn()) as bar:
            task = bar.add_task("train_cam", total=total, completed=start_epoch * steps_per_epoch, stats="")
            for epoch in range(start_epoch, tc.epochs):
                # each epoch draws from its own seeds, so a run resumed after a kill trains as one never stopped
                rng = np.random.default_rng([tc.seed, epoch])
                torch.manual_seed(tc.seed * 1_000_003 + epoch)
                model.train()
                t0 = time.time()
                examples = fixed if fixed is not None else random_crop_examples(
                    img_targets, sizes, crop, tc.crops_per_image, rng)
                paired = tc.network == "rpnet"
                if paired:
                    examples = pair_examples(examples, patients, rng)
                losses, aux_losses, all_t, all_p = [], [], [], []
                for x, t, start, extras in source.batches(examples, tc.batch_size, rng, device, paired=paired):
                    out = model(x, start=start, targets=t, extras=extras)
                    loss = F.binary_cross_entropy_with_logits(out["logits"], t, pos_weight=pos_weight)
                    if "aux_loss" in out:
                        aux = out["aux_loss"]
                        loss = loss + aux
                        aux_losses.append(float(aux.detach()))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    losses.append(float(loss.detach()))
                    all_t.append(t.detach().cpu().numpy())
                    all_p.append(torch.sigmoid(out["logits"].detach()).float().cpu().numpy())
                    bar.update(task, advance=1, stats=f"epoch {epoch + 1}/{tc.epochs} loss {np.mean(losses):.4f}")
                tt, pp = np.concatenate(all_t), np.concatenate(all_p)
                finite = bool(np.isfinite(pp).all()) and bool(np.isfinite(losses).all())
                # a diverged epoch (NaN outputs) goes to the diagnosis below, not into BCE / AUC, which raise on NaN
                plain = float(F.binary_cross_entropy(torch.from_numpy(pp).clamp(1e-6, 1 - 1e-6),
                                                     torch.from_numpy(tt)).item()) if finite else float("nan")
                rec = {"epoch": epoch, "loss": float(np.mean(losses)), "bce": plain, "chance_bce": chance,
                       "acc": accuracy(tt, pp) if finite else None, "auc": macro_auc(tt, pp) if finite else None,
                       "lr": opt.param_groups[-1]["lr"],
                       "aux_loss": float(np.mean(aux_losses)) if aux_losses else None,
                       "seconds": round(time.time() - t0, 2), "examples": int(len(tt)),
                       "examples_per_s": round(len(tt) / max(time.time() - t0, 1e-9), 2)}
                history.append(rec)
                # cached copies batch per scale, so an epoch may take a few more steps than estimated: keep the bar true
                bar.update(task, total=next(t for t in bar.tasks if t.id == task).completed
                           + steps_per_epoch * (tc.epochs - epoch - 1))
                write_text(logs / "train_cam.jsonl", "".join(json.dumps(r) + "\n" for r in history))
                acc_txt = "nan" if rec["acc"] is None else f"{rec['acc']:.3f}"
                bar.console.print(f"epoch {epoch + 1}: loss {rec['loss']:.4f} (chance {chance:.4f}) "
                                  f"acc {acc_txt} auc {rec['auc'] if rec['auc'] is None else round(rec['auc'], 3)} "
                                  f"{rec['examples_per_s']} crops/s")
                check_epoch(epoch, plain, chance, rec["auc"], pp, tc.min_epochs_before_diagnosis, history)
                # a backbone frozen whole is rebuilt from backbone.weights on resume: not rewritten every epoch
                # (a ViT-L's 1.2 GB); cam.safetensors keeps it, so the finished network stands on its own
                save_resume_point(ckpt_dir / "cam_last.safetensors", state_path, model,
                                  {"config_hash": h, "epoch": epoch, "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict(), "history": json.dumps(history),
                                   "weights_file": wf},
                                  skip_prefix="backbone." if frozen_whole else None)
        meta = {"classes": output_classes(cfg), "network": tc.network, "backbone": cfg.backbone.name,
                "config_hash": h, "epochs": tc.epochs, "final": history[-1] if history else None}
        save_weights(ckpt_dir / "cam.safetensors", model, meta)
        info.update(outputs=["checkpoints/cam.safetensors", "checkpoints/cam.json", "logs/train_cam.jsonl"],
                    train_seconds=round(time.time() - t_start, 2), examples_per_epoch=n_examples,
                    cached_features=cached)
        return meta
