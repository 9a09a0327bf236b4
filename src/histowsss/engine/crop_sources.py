"""Batches of training crops for the classifier: from cached frozen-trunk features, or from pixels.

With a frozen trunk (``backbone.frozen_stages`` > 0) and ``train_cam.cache_features``, the trunk runs once
per augmented copy of each whole image; training crops are then windows of those feature maps, so an
epoch costs only the trainable tail. Otherwise crops are cut, augmented and run through the whole net.
"""

from __future__ import annotations

import math

from typing import Iterator

import numpy as np
import torch

from histowsss.config import AugmentConfig, TrainCamConfig
from histowsss.data.crops import CropExample, dihedral_box
from histowsss.data.io import resize
from histowsss.data.loading import load_image
from histowsss.config import DataConfig
from histowsss.data.manifest import Sample
from histowsss.data.patches import pad_to_patches
from histowsss.data.transforms import Normalizer, dihedral, hed_jitter, mirror_pad, random_dihedral_index
from histowsss.engine.memory import check_cache_fits, image_pixels


def _progress(it, description: str, total: int | None = None):
    from rich.progress import track

    return track(it, description=description, total=total, transient=False)


def even_split_steps(n_examples: int, batch_size: int, paired: bool = False) -> int:
    """Batches of ``batch_size`` (made even for pairs) over ``n_examples``."""
    if paired:
        n_examples -= n_examples % 2
        batch_size = max(2, batch_size - batch_size % 2)
    return max(1, math.ceil(n_examples / batch_size))


def cached_levels(model: torch.nn.Module) -> tuple[int, ...]:
    """The extra feature levels a network asks for (RPNet's mid level) that the frozen trunk computes, so the cache
    holds them; a level past the trunk is computed by the network itself from the cached features."""
    bb = model.backbone
    return tuple(lv for lv in getattr(model, "extra_levels", ()) if bb.features[lv].unit < model.trunk_units)


class CachedTrunkSource:
    """Trunk features of ``copies`` augmented versions of every image (float16, on ``store_device``). ``sizes``:
    the images' sizes after ``data.image_scale`` when known (else read from the file headers for the memory check);
    images smaller than ``min_side`` are mirrored out to it (``train_cam.small_images``)."""

    def __init__(self, model: torch.nn.Module, samples: list[Sample], data: DataConfig, cfg: TrainCamConfig,
                 normalizer: Normalizer, device: torch.device, seed: int, channels_last: bool = True,
                 sizes: list[tuple[int, int]] | None = None, min_side: int = 0):
        self.start = model.trunk_units
        bb = model.backbone
        self.levels = cached_levels(model)
        level = bb.level_of_unit(self.start - 1)
        self.stride = bb.features[level].reduction if level is not None else _probe_stride(bb, self.start)
        rng = np.random.default_rng(seed)
        self.copies: list[list[tuple[torch.Tensor, int, float, tuple[int, int], dict]]] = []
        aug = cfg.augment
        model.eval()
        held = 0
        for i_s, s in enumerate(_progress(samples, "caching trunk features")):
            # patches past the border (data.patches.border: pad) take their features from the mirrored pixels
            # their labels count, not from a window moved back inside the image
            img = pad_to_patches(mirror_pad(load_image(s.image, data), min_side), data.patches)
            per = []
            for c in range(cfg.cache_copies):
                scale = cfg.cache_scales[c % len(cfg.cache_scales)]
                k = 0 if c == 0 else random_dihedral_index(rng, aug)
                a = img if scale == 1.0 else resize(img, scale, nearest=False)
                if c > 0:
                    a = hed_jitter(a, rng, aug.hed_jitter)
                a = dihedral(a, k)
                x = normalizer(torch.from_numpy(a if a.flags.writeable else a.copy())[None].to(device))
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.no_grad():
                    f, got = bb(x, 0, self.start, collect=self.levels)
                f = f[0].to(torch.float16)
                extra = {lv: t[0].to(torch.float16) for lv, t in got.items()}
                per.append((f, k, scale, img.shape[:2], extra))
                held += f.numel() * 2 + sum(t.numel() * 2 for t in extra.values())
            self.copies.append(per)
            if i_s == 0:
                pixels = ([float(h * w) for h, w in sizes] if sizes is not None
                          else image_pixels([x.image for x in samples], data.image_scale))
                check_cache_fits("train_cam", held, pixels, device,
                                 "lower train_cam.cache_copies or data.image_scale, or set train_cam.cache_features="
                                 "false (crops then run through the whole network: slower, no cache)")
        model.train()

    def max_steps(self, n_examples: int, batch_size: int, paired: bool = False) -> int:
        """Most batches an epoch of ``n_examples`` (of one size) can take: each copy scale ends in its own partial
        batch, so up to one more per extra scale than a plain split (the learning-rate schedule's length)."""
        unit = 2 if paired else 1
        n_scales = len({c[2] for c in self.copies[0]}) if self.copies else 1
        return max(1, math.ceil((n_examples // unit) / max(1, batch_size // unit)) + n_scales - 1)

    def batches(self, examples: list[CropExample], batch_size: int, rng: np.random.Generator,
                device: torch.device, paired: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, dict[int, torch.Tensor]]]:
        """Each example once, in a random copy; batches group examples of one copy scale (equal sizes).

        ``paired``: ``examples`` is [a1, p1, a2, p2, ...]; each pair stays adjacent, in copies of one scale.
        """
        n_copies = len(self.copies[0])
        n_scales = len({c[2] for c in self.copies[0]})
        unit = 2 if paired else 1
        groups: dict[tuple[float, int], list[list[tuple[CropExample, int]]]] = {}
        for u in range(0, len(examples) - unit + 1, unit):
            c0 = int(rng.integers(n_copies))
            members = []
            for m, ex in enumerate(examples[u : u + unit]):
                c = c0 if m == 0 else int(rng.choice([i for i in range(n_copies) if i % n_scales == c0 % n_scales]))
                members.append((ex, c))
            scale = self.copies[members[0][0].image][c0][2]
            cells = max(1, round(members[0][0].size * scale / self.stride))
            groups.setdefault((scale, cells), []).append(members)
        per_batch = max(1, batch_size // unit)
        batches = []
        for units in groups.values():
            order = rng.permutation(len(units))
            for b in range(0, len(units), per_batch):
                batches.append([item for i in order[b : b + per_batch] for item in units[i]])
        for bi in rng.permutation(len(batches)):
            batch = batches[bi]
            xs, ts, ex_feats = [], [], {lv: [] for lv in self.levels}
            for ex, c in batch:
                f, k, scale, (h, w), extra = self.copies[ex.image][c]
                size = round(ex.size * scale)
                hs, ws = round(h * scale), round(w * scale)
                y, x = dihedral_box(round(ex.y * scale), round(ex.x * scale), size, hs, ws, k)
                cells = max(1, round(size / self.stride))
                cy = min(max(0, round(y / self.stride)), max(0, f.shape[1] - cells))
                cx = min(max(0, round(x / self.stride)), max(0, f.shape[2] - cells))
                xs.append(f[:, cy : cy + cells, cx : cx + cells])
                for lv, t in extra.items():
                    r = max(1, round(t.shape[1] / f.shape[1]))  # integer stride ratio between the two levels
                    es = cells * r
                    ey = min(max(0, round(cy * r)), max(0, t.shape[1] - es))
                    ex_ = min(max(0, round(cx * r)), max(0, t.shape[2] - es))
                    ex_feats[lv].append(t[:, ey : ey + es, ex_ : ex_ + es])
                ts.append(torch.from_numpy(ex.target))
            extras = {lv: torch.stack(v).to(device).float() for lv, v in ex_feats.items()}
            yield torch.stack(xs).to(device).float(), torch.stack(ts).to(device), self.start, extras


class PixelSource:
    """Crops cut from decoded images and augmented on the fly (flips/rot90, HED jitter, one scale per batch)."""

    def __init__(self, samples: list[Sample], data: DataConfig, aug: AugmentConfig, normalizer: Normalizer,
                 channels_last: bool = True, min_side: int = 0):
        self.images = [mirror_pad(load_image(s.image, data), min_side) for s in _progress(samples, "reading images")]
        self.aug = aug
        self.normalizer = normalizer
        self.channels_last = channels_last

    def max_steps(self, n_examples: int, batch_size: int, paired: bool = False) -> int:
        """Batches an epoch of ``n_examples`` takes (pairs: an even batch size)."""
        return even_split_steps(n_examples, batch_size, paired)

    def batches(self, examples: list[CropExample], batch_size: int, rng: np.random.Generator,
                device: torch.device, paired: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, dict[int, torch.Tensor]]]:
        """Random batches of augmented pixel crops (``paired``: keep (anchor, partner) pairs adjacent)."""
        if paired:
            units = rng.permutation(len(examples) // 2)
            order = np.stack([2 * units, 2 * units + 1], axis=1).ravel()
            batch_size = max(2, batch_size - batch_size % 2)
        else:
            order = rng.permutation(len(examples))
        lo, hi = self.aug.scale_range
        for b in range(0, len(order), batch_size):
            scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            xs, ts = [], []
            for i in order[b : b + batch_size]:
                ex = examples[i]
                crop = self.images[ex.image][ex.y : ex.y + ex.size, ex.x : ex.x + ex.size]
                if crop.shape[0] != ex.size or crop.shape[1] != ex.size:
                    crop = np.pad(crop, ((0, ex.size - crop.shape[0]), (0, ex.size - crop.shape[1]), (0, 0)), mode="reflect")
                if scale != 1.0:
                    crop = resize(crop, scale, nearest=False)
                crop = dihedral(hed_jitter(crop, rng, self.aug.hed_jitter), random_dihedral_index(rng, self.aug))
                xs.append(torch.from_numpy(crop))
                ts.append(torch.from_numpy(ex.target))
            x = self.normalizer(torch.stack(xs).to(device))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, torch.stack(ts).to(device), 0, {}


def _probe_stride(bb: torch.nn.Module, start: int) -> int:
    dev = next(bb.parameters()).device
    with torch.no_grad():
        y = bb(torch.zeros(1, 3, 64, 64, device=dev), 0, start)[0]
    return 64 // y.shape[-1]


class CachedPatchSource:
    """Backbone output of every fixed patch computed on the patch alone (no outside context), per augmented copy.

    Copies: identity, then random dihedral transforms + HED jitter of the patch pixels.
    """

    def __init__(self, model: torch.nn.Module, samples: list[Sample], examples: list[CropExample],
                 data: DataConfig, cfg: TrainCamConfig, normalizer: Normalizer, device: torch.device, seed: int,
                 channels_last: bool = True, batch: int = 64):
        self.start = model.trunk_units
        self.levels = cached_levels(model)
        bb = model.backbone
        rng = np.random.default_rng(seed)
        self.index = {id(e): i for i, e in enumerate(examples)}
        self.feats: list[list[torch.Tensor]] = [[] for _ in examples]
        self.extras: list[list[dict]] = [[] for _ in examples]
        by_image: dict[int, list[int]] = {}
        for i, e in enumerate(examples):
            by_image.setdefault(e.image, []).append(i)
        model.eval()
        order = list(by_image)
        for n_done, img_idx in enumerate(_progress(order, "caching patch features")):
            img = load_image(samples[img_idx].image, data)
            ids = by_image[img_idx]
            for c in range(cfg.cache_copies):
                crops = []
                for i in ids:
                    e = examples[i]
                    crop = img[e.y : e.y + e.size, e.x : e.x + e.size]
                    if crop.shape[0] != e.size or crop.shape[1] != e.size:
                        crop = np.pad(crop, ((0, e.size - crop.shape[0]), (0, e.size - crop.shape[1]), (0, 0)),
                                      mode="reflect")
                    if c > 0:
                        crop = dihedral(hed_jitter(crop, rng, cfg.augment.hed_jitter),
                                        random_dihedral_index(rng, cfg.augment))
                    crops.append(np.ascontiguousarray(crop))
                for b in range(0, len(ids), batch):
                    x = normalizer(torch.from_numpy(np.stack(crops[b : b + batch])).to(device))
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.no_grad():
                        f, got = bb(x, 0, self.start, collect=self.levels)
                    for j, i in enumerate(ids[b : b + batch]):
                        self.feats[i].append(f[j].to(torch.float16))
                        self.extras[i].append({lv: t[j].to(torch.float16) for lv, t in got.items()})
            if n_done == 0:  # the cache grows with the number of patches: extrapolate by it
                held = sum(t.numel() * 2 for i in ids for t in self.feats[i])
                held += sum(t.numel() * 2 for i in ids for d in self.extras[i] for t in d.values())
                check_cache_fits("train_cam", held, [float(len(by_image[k])) for k in order], device,
                                 "lower train_cam.cache_copies, or set train_cam.cache_features=false (patches then "
                                 "run through the whole network: slower, no cache)")
        model.train()

    def max_steps(self, n_examples: int, batch_size: int, paired: bool = False) -> int:
        """Batches an epoch of ``n_examples`` takes (pairs: an even batch size)."""
        return even_split_steps(n_examples, batch_size, paired)

    def batches(self, examples: list[CropExample], batch_size: int, rng: np.random.Generator,
                device: torch.device, paired: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, dict[int, torch.Tensor]]]:
        """Batches of cached patch features, each example in a random copy (pairs kept adjacent)."""
        n = len(examples)
        if paired:
            units = rng.permutation(n // 2)
            order = np.stack([2 * units, 2 * units + 1], axis=1).ravel()
            batch_size = max(2, batch_size - batch_size % 2)
        else:
            order = rng.permutation(n)
        for b in range(0, len(order), batch_size):
            xs, ts, ex = [], [], {lv: [] for lv in self.levels}
            for k in order[b : b + batch_size]:
                e = examples[k]
                i = self.index[id(e)]
                c = int(rng.integers(len(self.feats[i])))
                xs.append(self.feats[i][c])
                for lv in self.levels:
                    ex[lv].append(self.extras[i][c][lv])
                ts.append(torch.from_numpy(e.target))
            extras = {lv: torch.stack(v).to(device).float() for lv, v in ex.items()}
            yield torch.stack(xs).to(device).float(), torch.stack(ts).to(device), self.start, extras
