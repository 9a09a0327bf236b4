"""RPNet: cross-image region mining with region prototypes (Liu et al., IEEE TMM 2021, arXiv 2108.07413).

Training sees images in pairs of the same class. For each image and each class it is labelled with:

* seeds = the plain branch's CAM (detached, max-normalised) above ``seed_threshold``;
* prototypes = masked average pooling of features over the seeds, from two spatial resolutions
  (a mid level of the backbone at stride 8, projected by a learned 1x1 conv, and the last feature map f_N
  at stride 16), from the image itself and from its partner, as a whole-region and a "part" prototype
  (seeds inside a random window dropped): 2 levels x 2 images x 2 = 8 prototypes P_n;
* s_n = cosine(f_N, P_n) for every prototype: the mid-level ones are pooled from the mid features projected into
  f_N's channel space by that learned 1x1 conv, and compared with the last feature map like the others;
  FM = Gaussian-smoothed max_n relu(s_n), a foreground probability map per class;
* the prototype branch classifies f_N * FM with the shared 1x1 classifier. As the classifier is linear,
  classifier(f_N * FM)_c = FM_c * CAM_c, which is how it is computed.

Loss (added to the plain BCE by train_cam): BCE of the prototype branch on the classes present in each
image + ``consistency_weight`` x MSE between the plain and the prototype-branch CAMs on those classes.
Regions that the query image fails to activate but that resemble its partner's class region get a high FM,
so the branch's classification loss raises them; the consistency loss carries that into the plain branch.
Inference (make_cam) uses the plain branch: the same files as the plain CAM.

Histopathology choices: an image labelled only background/normal has no foreground class, hence no
prototypes and no prototype-branch loss (its plain-branch target is all zeros); where background is a
classifier class (crop labels marking background) it is treated as any class. Partners share the same
label set and come from another patient whenever one exists. Multi-label: one FM per present class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histowsss.config import BackboneConfig
from histowsss.models.cam import CamNet
from histowsss.models.registry import register_cam_network


def masked_average(feat: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Prototype (C,) = average of ``feat`` (C, H, W) over ``mask`` (H, W) in [0, 1]."""
    return (feat * mask).sum(dim=(1, 2)) / (mask.sum() + eps)


def cosine_map(feat: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (P, H, W) between every cell of ``feat`` (C, H, W) and each prototype of ``protos`` (P, C)."""
    f = F.normalize(feat, dim=0)
    p = F.normalize(protos, dim=1)
    return torch.einsum("pc,chw->phw", p, f)


def gaussian_smooth(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Smooth maps (N, H, W) with a 3x3 (sigma <= 1) or 5x5 Gaussian, keeping the size."""
    r = 1 if sigma <= 1.0 else 2
    ax = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    k = (g[:, None] * g[None, :])
    k = (k / k.sum())[None, None]
    return F.conv2d(F.pad(x[:, None], (r, r, r, r), mode="replicate"), k)[:, 0]


def part_mask(seed: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Seed dropout: drop the seeds inside a random window of half the map's size (keeps a "part")."""
    h, w = seed.shape
    wh, ww = max(1, h // 2), max(1, w // 2)
    y = int(torch.randint(0, h - wh + 1, (1,), generator=generator))
    x = int(torch.randint(0, w - ww + 1, (1,), generator=generator))
    out = seed.clone()
    out[y : y + wh, x : x + ww] = 0
    return out if out.sum() > 0 else seed


def foreground_map(f_last: torch.Tensor, f_mid: torch.Tensor, seeds_self: list[torch.Tensor],
                   seeds_pair: list[torch.Tensor], f_last_pair: torch.Tensor, f_mid_pair: torch.Tensor,
                   sigma: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """FM (H, W) for one class of one image from its own and its partner's features and seeds.

    ``f_last`` (C, H, W) and ``f_mid`` (C, 2H, 2W) (mid level already projected to C channels);
    seeds are (H, W) masks on the last level's grid, for the image and its partner (one list entry each).
    """
    protos = []
    for fl, fm, seeds in ((f_last, f_mid, seeds_self), (f_last_pair, f_mid_pair, seeds_pair)):
        for seed in seeds:
            if seed.sum() <= 0:
                continue
            for s in (seed, part_mask(seed, generator)):
                protos.append(masked_average(fl, s))
                s_mid = F.interpolate(s[None, None], size=fm.shape[1:], mode="nearest")[0, 0]
                protos.append(masked_average(fm, s_mid))
    if not protos:
        return torch.zeros_like(f_last[0])
    sim = cosine_map(f_last, torch.stack(protos)).clamp(min=0)  # (P, H, W)
    fm_map = sim.max(dim=0).values
    return gaussian_smooth(fm_map[None], sigma)[0].clamp(0, 1)


def batch_part_masks(seeds: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Seed dropout for a batch: (B, K, H, W) seeds with one random half-size window each set to 0.

    Where dropping the window would leave no seed, the whole seed is kept (as :func:`part_mask`).
    """
    b, k, h, w = seeds.shape
    wh, ww = max(1, h // 2), max(1, w // 2)
    dev = seeds.device
    y0 = torch.randint(0, h - wh + 1, (b, k, 1, 1), generator=generator).to(dev)
    x0 = torch.randint(0, w - ww + 1, (b, k, 1, 1), generator=generator).to(dev)
    yy = torch.arange(h, device=dev).view(1, 1, h, 1)
    xx = torch.arange(w, device=dev).view(1, 1, 1, w)
    window = (yy >= y0) & (yy < y0 + wh) & (xx >= x0) & (xx < x0 + ww)
    part = seeds * (~window).to(seeds.dtype)
    empty = part.flatten(2).sum(2) <= 0
    return torch.where(empty[..., None, None], seeds, part)


def batch_foreground_maps(f_last: torch.Tensor, f_mid: torch.Tensor, seeds: torch.Tensor, parts: torch.Tensor,
                          partner: torch.Tensor, sigma: float = 1.0, eps: float = 1e-5) -> torch.Tensor:
    """FM (B, K, H, W) for every image and class at once (the batched form of :func:`foreground_map`).

    ``f_last`` (B, C, H, W), ``f_mid`` (B, C, Hm, Wm), ``seeds``/``parts`` (B, K, H, W) whole and part seeds on
    the last grid, ``partner`` (B,) the index of each image's partner. Prototypes of image b, class k: whole and
    part seeds of b and of partner[b], each pooled on both levels (up to 8); an empty seed adds none.
    """
    masks = torch.stack([seeds, parts], dim=2)  # (B, K, 2, H, W)
    bsz, k, _, h, w = masks.shape
    mid = F.interpolate(masks.flatten(1, 2), size=f_mid.shape[2:], mode="nearest").view(bsz, k, 2, *f_mid.shape[2:])
    p_last = torch.einsum("bchw,bkshw->bksc", f_last, masks) / (masks.sum(dim=(3, 4))[..., None] + eps)
    p_mid = torch.einsum("bchw,bkshw->bksc", f_mid, mid) / (mid.sum(dim=(3, 4))[..., None] + eps)
    own = torch.cat([p_last, p_mid], dim=2)  # (B, K, 4, C)
    valid_own = (seeds.flatten(2).sum(2) > 0)[..., None].expand(-1, -1, 4)
    protos = torch.cat([own, own[partner]], dim=2)  # (B, K, 8, C)
    valid = torch.cat([valid_own, valid_own[partner]], dim=2)  # (B, K, 8)
    sim = torch.einsum("bkpc,bchw->bkphw", F.normalize(protos, dim=3), F.normalize(f_last, dim=1)).clamp(min=0)
    sim = sim * valid[..., None, None].to(sim.dtype)
    fm = sim.max(dim=2).values  # (B, K, H, W)
    return gaussian_smooth(fm.reshape(bsz * k, h, w), sigma).view(bsz, k, h, w).clamp(0, 1)


@register_cam_network("rpnet")
class RPNet(CamNet):
    """A CamNet with a region-prototype branch used during training only (see the module docstring)."""

    def __init__(self, backbone: BackboneConfig, num_outputs: int, head_layers: int = 1, head_channels: int = 256,
                 dropout: float = 0.1, options: dict | None = None, load_pretrained: bool = True, **_: object):
        super().__init__(backbone, num_outputs, head_layers, head_channels, dropout, load_pretrained)
        from histowsss.config import RPNET_OPTIONS

        opts = dict(options or {})
        unknown = sorted(set(opts) - set(RPNET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown train_cam.rpnet option(s) {unknown}; known: {', '.join(RPNET_OPTIONS)}")
        opts = {**RPNET_OPTIONS, **opts}
        self.mid_level = int(opts["mid_level"])
        self.seed_threshold = float(opts["seed_threshold"])
        self.consistency_weight = float(opts["consistency_weight"])
        self.branch_weight = float(opts["branch_weight"])
        self.sigma = float(opts["sigma"])
        if not -len(self.backbone.features) <= self.mid_level < len(self.backbone.features):  # negative: from the end
            raise ValueError(f"train_cam.rpnet mid_level {self.mid_level}: the backbone has feature levels 0.."
                             f"{len(self.backbone.features) - 1}; set train_cam.rpnet.mid_level to one of them")
        mid_ch = self.backbone.features[self.mid_level].channels
        out_ch = self.classifier.in_channels
        self.mid_proj = nn.Conv2d(mid_ch, out_ch, 1, bias=False)

    @property
    def extra_levels(self) -> tuple[int, ...]:
        return (self.mid_level,)

    def forward(self, x: torch.Tensor, start: int = 0, targets: torch.Tensor | None = None,
                extras: dict[int, torch.Tensor] | None = None, **_: object) -> dict[str, torch.Tensor]:
        """Plain logits/CAM; when training with ``targets`` on a paired batch, also ``aux_loss``."""
        if self.backbone.features[self.mid_level].unit >= start:  # computed here (from the image, or past the cache)
            last, got = self.backbone(x, start, collect=(self.mid_level,))
            mid = got.get(self.mid_level)
        else:
            last = self.backbone(x, start)[0]
            mid = None if extras is None else extras.get(self.mid_level)
        f = self.head(last)
        cam = self.classifier(self.dropout(f))
        out = {"logits": cam.float().mean(dim=(2, 3)), "cam": cam}  # float32 under autocast too (see cam.py)
        if self.training and targets is not None and mid is not None:
            out["aux_loss"] = self.prototype_loss(f, self.mid_proj(mid.float()), cam, targets)
        return out

    def prototype_loss(self, f: torch.Tensor, f_mid: torch.Tensor, cam: torch.Tensor,
                       targets: torch.Tensor) -> torch.Tensor:
        """Prototype-branch BCE + consistency MSE over a batch laid out as consecutive (image, partner) pairs.

        One batched computation for all images and classes; a (image, class) term counts when both the image
        and its partner carry the class (an odd last image has no partner and adds nothing).
        """
        b, k = targets.shape
        with torch.no_grad():
            c = F.relu(cam.detach())
            cn = c / (c.flatten(2).max(dim=2).values[..., None, None] + 1e-5)
            seeds = (cn > self.seed_threshold).to(f.dtype)
            parts = batch_part_masks(seeds)
        idx = torch.arange(b, device=f.device)
        partner = torch.where(idx % 2 == 0, idx + 1, idx - 1).clamp(max=b - 1)
        has_partner = (idx % 2 == 1) | (idx + 1 < b)
        pos = targets > 0.5
        use = pos & pos[partner] & has_partner[:, None]  # (B, K)
        if not bool(use.any()):
            return cam.sum() * 0.0
        fm = batch_foreground_maps(f, f_mid, seeds, parts, partner, self.sigma)
        cam_p = fm * cam
        logit_p = cam_p.mean(dim=(2, 3))
        bce = F.binary_cross_entropy_with_logits(logit_p, torch.ones_like(logit_p), reduction="none")
        cons = ((F.relu(cam) - F.relu(cam_p)) ** 2).mean(dim=(2, 3))
        per = self.branch_weight * bce + self.consistency_weight * cons
        return per[use].mean()
