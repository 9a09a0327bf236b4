"""Inter-pixel relation network (IRN; Ahn, Cho & Kwak, CVPR 2019): class-boundary and displacement heads.

The backbone is a :class:`~histowsss.models.backbone.StagedBackbone` kept FROZEN (as in IRN, whose ResNet-50 is
detached), so its multi-level features can be computed once per image and augmentation and cached
(:meth:`IRNet.extract`); training then runs only the two light heads (:meth:`IRNet.heads`).

Everything lives on the stride-4 grid of the image (the grid of ``cams/<name>.npz``): feature levels finer
than stride 4 are average-pooled to it once when extracted, coarser ones are upsampled inside the heads.

* Boundary branch: per level 1x1 conv -> GroupNorm -> ReLU (``edge_channels``), upsampled to stride 4,
  concatenated, 1x1 conv -> one logit per cell.
* Displacement branch: coarse levels (stride > 4) -> 1x1 conv/GN/ReLU -> stride 8, fused by a 1x1 conv and
  upsampled to stride 4; concatenated with the stride-4 levels, 1x1 conv/GN/ReLU, 1x1 conv -> (dy, dx) in
  grid cells, then :class:`MeanShift` (the running mean is subtracted at inference, as in the reference).

Losses (:func:`irn_losses`) follow the reference ``step/train_irn.py``: pixel pairs within ``radius`` (half-plane
offsets of :func:`histowsss.ops.path_index.neighbour_offsets`); pairs touching an ignore pixel are dropped;
same-label pairs are positive (background or foreground), different-label pairs negative; the affinity of a
pair is ``1 - max`` boundary probability on its straight path; displacement differences of same-class
foreground pairs must equal their offset, those of background pairs must vanish. Without a background class
(``background=None``: tissue types) every class is foreground: each same-class pair is a foreground pair, and the
positive affinity and displacement losses are the foreground terms alone (the reference averages the two kinds).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histowsss.config import BackboneConfig
from histowsss.models.backbone import StagedBackbone
from histowsss.ops.path_index import neighbour_offsets, path_points

IGNORE = 255
STRIDE = 4

__all__ = ["IRNet", "IRNHeads", "MeanShift", "pair_labels", "path_max", "affinity_loss", "displacement_loss",
           "irn_losses"]


def _cgr(cin: int, cout: int) -> nn.Sequential:
    """1x1 conv (no bias) -> GroupNorm -> ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(max(1, cout // 8), cout),
                         nn.ReLU(inplace=True))


def fit(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop (bottom/right) or replicate-pad ``t`` (B, C, h, w) to ``size``."""
    h, w = size
    t = t[..., :h, :w]
    ph, pw = h - t.shape[-2], w - t.shape[-1]
    if ph > 0 or pw > 0:
        t = F.pad(t, (0, pw, 0, ph), mode="replicate")
    return t


def _up(t: torch.Tensor, factor: int, size: tuple[int, int]) -> torch.Tensor:
    if factor > 1:
        t = F.interpolate(t, scale_factor=factor, mode="bilinear", align_corners=False)
    return fit(t, size)


class MeanShift(nn.BatchNorm2d):
    """Tracks the running mean of the displacement field while training; subtracts it at inference."""

    def __init__(self, num_features: int = 2, momentum: float = 0.1):
        super().__init__(num_features, affine=False, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.training:
            super().forward(x.detach())  # only to update running_mean
            return x
        return x - self.running_mean.view(1, -1, 1, 1).to(x.dtype)


class IRNHeads(nn.Module):
    """The trainable part of IRN: boundary and displacement heads on cached multi-level features."""

    def __init__(self, channels: list[int], reductions: list[int], edge_channels: int = 32, dp_channels: int = 64):
        super().__init__()
        self.reductions = list(reductions)
        self.fine = [i for i, r in enumerate(self.reductions) if r == STRIDE]
        self.coarse = [i for i, r in enumerate(self.reductions) if r > STRIDE]
        if not self.fine:
            raise ValueError("IRN needs a feature level at stride <= 4")
        ec, dc = edge_channels, dp_channels
        self.edge_layers = nn.ModuleList([_cgr(c, ec) for c in channels])
        self.edge_out = nn.Conv2d(ec * len(channels), 1, 1, bias=True)
        self.dp_layers = nn.ModuleList([_cgr(c, dc) for c in channels])
        self.dp_mid = _cgr(dc * len(self.coarse), dc) if self.coarse else None
        self.dp_out = nn.Sequential(_cgr(dc * (len(self.fine) + (1 if self.coarse else 0)), dc),
                                    nn.Conv2d(dc, 2, 1, bias=False))
        self.mean_shift = MeanShift(2)

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Boundary logits (B, h, w) and displacement (B, 2, h, w) on the stride-4 grid of ``size``."""
        feats = [f.float() for f in feats]
        edges = [_up(self.edge_layers[i](f), self.reductions[i] // STRIDE, size) for i, f in enumerate(feats)]
        edge = self.edge_out(torch.cat(edges, 1))[:, 0]
        parts = [fit(self.dp_layers[i](feats[i]), size) for i in self.fine]
        if self.coarse:
            s8 = ((size[0] + 1) // 2, (size[1] + 1) // 2)
            mids = [_up(self.dp_layers[i](feats[i]), self.reductions[i] // (2 * STRIDE), s8) for i in self.coarse]
            assert self.dp_mid is not None
            parts.append(_up(self.dp_mid(torch.cat(mids, 1)), 2, size))
        dp = self.mean_shift(self.dp_out(torch.cat(parts, 1)))
        return edge, dp


class IRNet(nn.Module):
    """Frozen multi-level backbone (``backbone``) + trainable :class:`IRNHeads` (``head``), stride-4 outputs."""

    def __init__(self, backbone: BackboneConfig, edge_channels: int = 32, dp_channels: int = 64):
        super().__init__()
        self.backbone = StagedBackbone(backbone)
        self.backbone.requires_grad_(False)
        self.backbone.eval()  # frozen: BatchNorm must use its running statistics, also when caching features
        specs = self.backbone.features
        # a backbone without a stride-4 level (a vision transformer: every level on the 16-px grid) gets the image
        # itself, average-pooled to stride 4, as the fine level the boundary and displacement heads need
        self.image_level = min(s.reduction for s in specs) > STRIDE
        self.pool = [max(1, STRIDE // s.reduction) for s in specs]
        self.reductions = [STRIDE] * self.image_level + [max(STRIDE, s.reduction) for s in specs]
        channels = [3] * self.image_level + [s.channels for s in specs]
        self.head = IRNHeads(channels, self.reductions, edge_channels, dp_channels)

    @property
    def max_reduction(self) -> int:
        """Largest feature stride: training crops are aligned to it."""
        return max(self.reductions)

    def train(self, mode: bool = True) -> "IRNet":
        super().train(mode)
        self.backbone.eval()  # frozen, BN statistics included
        return self

    @torch.no_grad()
    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-level backbone features of normalised images ``x`` (levels finer than stride 4 pooled to it)."""
        if self.backbone.training:
            self.backbone.eval()
        n = len(self.backbone.features)
        _, feats = self.backbone(x, 0, None, collect=tuple(range(n)))
        out = []
        for i in range(n):
            f = feats[i]
            if self.pool[i] > 1:
                f = F.avg_pool2d(f, self.pool[i], ceil_mode=True)
            out.append(f)
        if self.image_level:
            out.insert(0, F.avg_pool2d(x.float(), STRIDE, ceil_mode=True))
        return out

    def heads(self, feats: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(feats, size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boundary logits and displacement for normalised images (grid = ceil(H/4) x ceil(W/4))."""
        size = (-(-x.shape[-2] // STRIDE), -(-x.shape[-1] // STRIDE))
        return self.head(self.extract(x), size)

    @torch.no_grad()
    def infer(self, x: torch.Tensor, flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference for one normalised image (1, 3, H, W): boundary probabilities (h, w), displacement (2, h, w).

        As the reference (``EdgeDisplacement``): the boundary logits of the image and of its horizontal flip
        are averaged before the sigmoid; the displacement comes from the unflipped image.
        """
        if flip:
            x = torch.cat([x, x.flip(-1)])
        edge, dp = self.forward(x)
        logit = (edge[0] + edge[1].flip(-1)) / 2 if flip else edge[0]
        return torch.sigmoid(logit), dp[0]


# ---------------------------------------------------------------------------------------------------- losses
# Every loss function takes ``step`` / ``phase``: pairs are formed only for source pixels on the sub-grid
# ``phase + step * (i, j)`` (their partners and paths still use every pixel). ``step=2`` with a random phase
# per batch is an unbiased estimate at a quarter of the cost (the CPU default of ``train_irn.pair_step``).
def _shift(padded: torch.Tensor, p: int, dy: int, dx: int, h: int, w: int, step: int = 1,
           phase: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Values at ``(y + dy, x + dx)`` for the sub-grid source pixels ``(y, x)`` of a tensor padded by ``p``."""
    oy, ox = phase
    return padded[..., p + dy + oy : p + dy + h : step, p + dx + ox : p + dx + w : step]


def pair_labels(labels: torch.Tensor, radius: int, background: int | None, ignore: int = IGNORE, step: int = 1,
                phase: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair labels of every (sub-grid) pixel with its half-plane neighbours within ``radius``.

    ``labels`` (B, H, W) integer class ids (``ignore`` = unknown). Returns boolean (B, K, h, w) maps
    ``bg_pos`` (both background), ``fg_pos`` (both the same foreground class), ``neg`` (different classes);
    a pair with an ignore pixel, or whose partner lies outside the image, is in none of them. ``background`` None:
    no class is background (``bg_pos`` is empty).
    """
    offsets = neighbour_offsets(radius)
    p = radius
    _, h, w = labels.shape
    lab = labels.long()
    lp = F.pad(lab, (p, p, p, p), value=ignore)
    dst = torch.stack([_shift(lp, p, dy, dx, h, w, step, phase) for dy, dx in offsets], 1)
    src = _shift(lp, p, 0, 0, h, w, step, phase)[:, None]
    valid = (src != ignore) & (dst != ignore)
    same = src == dst
    is_bg = (src == background) if background is not None else torch.zeros_like(src, dtype=torch.bool)
    bg_pos = valid & same & is_bg
    fg_pos = valid & same & ~is_bg
    neg = valid & ~same
    return bg_pos, fg_pos, neg


def path_max(boundary: torch.Tensor, radius: int, step: int = 1, phase: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Maximum of ``boundary`` (B, H, W) on the straight path of every pair: (B, K, h, w), differentiable.

    The path of a pair includes both end points (reference ``PathIndex``). Entries whose partner is outside
    the image are meaningless (0 padding) and must be masked by the caller.
    """
    offsets = neighbour_offsets(radius)
    p = radius
    _, h, w = boundary.shape
    bp = F.pad(boundary, (p, p, p, p), value=0.0)
    out = []
    for dy, dx in offsets:
        pts = path_points(dy, dx)
        out.append(torch.stack([_shift(bp, p, py, px, h, w, step, phase) for py, px in pts], 0).amax(0))
    return torch.stack(out, 1)


def affinity_loss(boundary: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor,
                  radius: int, eps: float = 1e-5, step: int = 1, phase: tuple[int, int] = (0, 0),
                  has_background: bool = True) -> dict[str, torch.Tensor]:
    """Reference affinity losses from boundary probabilities (B, H, W): ``pos`` (bg/2 + fg/2; fg alone without
    a background class) and ``neg``.

    ``aff = 1 - max boundary on the path``; ``pos = -log(aff)``, ``neg = -log(1 - aff)``, each averaged over
    its pairs (pairs touching ignore pixels are in no mask, so they contribute nothing).
    """
    aff = 1.0 - path_max(boundary, radius, step, phase)
    bgp, fgp, ng = bg_pos.float(), fg_pos.float(), neg.float()
    bg = (-bgp * torch.log(aff + eps)).sum() / (bgp.sum() + eps)
    fg = (-fgp * torch.log(aff + eps)).sum() / (fgp.sum() + eps)
    n = (-ng * torch.log(1.0 + eps - aff)).sum() / (ng.sum() + eps)
    return {"pos_aff": bg / 2 + fg / 2 if has_background else fg, "neg_aff": n}


def displacement_loss(dp: torch.Tensor, fg_pos: torch.Tensor, bg_pos: torch.Tensor, radius: int,
                      eps: float = 1e-5, step: int = 1, phase: tuple[int, int] = (0, 0)) -> dict[str, torch.Tensor]:
    """Reference displacement losses for ``dp`` (B, 2, H, W) in grid cells.

    Same-class foreground pairs (i, j = i + d): ``D(i) - D(j)`` should equal ``d`` (both point at one centroid);
    background pairs: ``D(i) - D(j)`` should be 0. L1, averaged over pairs and the two components.
    """
    offsets = neighbour_offsets(radius)
    p = radius
    _, _, h, w = dp.shape
    dpp = F.pad(dp, (p, p, p, p), mode="constant", value=0.0)
    src = _shift(dpp, p, 0, 0, h, w, step, phase)
    diff = torch.stack([src - _shift(dpp, p, dy, dx, h, w, step, phase) for dy, dx in offsets], 2)  # (B, 2, K, h, w)
    target = torch.tensor(offsets, dtype=dp.dtype, device=dp.device).t().reshape(1, 2, -1, 1, 1)
    fgp, bgp = fg_pos.float()[:, None], bg_pos.float()[:, None]
    fg = ((diff - target).abs() * fgp).sum() / (2 * fg_pos.sum() + eps)
    bg = (diff.abs() * bgp).sum() / (2 * bg_pos.sum() + eps)
    return {"dp_fg": fg, "dp_bg": bg}


def irn_losses(edge_logits: torch.Tensor, dp: torch.Tensor, labels: torch.Tensor, radius: int,
               background: int | None, step: int = 1, phase: tuple[int, int] = (0, 0)) -> dict[str, torch.Tensor]:
    """All IRN losses and their reference combination ``total = (pos + neg) / 2 + (dp_fg + dp_bg) / 2``; without
    a background class (None) ``pos`` is the foreground term and ``total = (pos + neg) / 2 + dp_fg`` (no
    ``dp_bg``)."""
    bg_pos, fg_pos, neg = pair_labels(labels, radius, background, step=step, phase=phase)
    out = affinity_loss(torch.sigmoid(edge_logits), bg_pos, fg_pos, neg, radius, step=step, phase=phase,
                        has_background=background is not None)
    out.update(displacement_loss(dp, fg_pos, bg_pos, radius, step=step, phase=phase))
    if background is None:
        del out["dp_bg"]
        out["total"] = (out["pos_aff"] + out["neg_aff"]) / 2 + out["dp_fg"]
    else:
        out["total"] = (out["pos_aff"] + out["neg_aff"]) / 2 + (out["dp_fg"] + out["dp_bg"]) / 2
    return out
