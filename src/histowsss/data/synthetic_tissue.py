"""Rendering of one synthetic H&E tile: glands with nuclei and lumen in stroma, benign or malignant.

Rendering works in optical-density space (Beer-Lambert): every tissue component is
described by a hematoxylin and an eosin concentration map, which are mixed with
per-image jittered stain vectors and converted to RGB. Components:

* stroma: eosin-pink collagen with a wavy fibre texture, pale gaps and scattered small
  dark nuclei (elongated fibroblasts, round lymphocytes);
* glands: a white lumen surrounded by an epithelial ring of pink-purple cytoplasm with a
  row of hematoxylin nuclei along the basal side (benign: few regular round/elliptical
  well separated glands, small regular basal nuclei, goblet cells; malignant: many
  crowded irregular glands, small irregular lumens, large dark pleomorphic stratified
  nuclei, luminal debris).

The gland mask covers lumen plus epithelium, like the GlaS annotations.
Everything is vectorised numpy/scipy; one 256x256 image takes a few tens of ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["render_tissue"]


def _od(rgb: tuple[float, float, float]) -> np.ndarray:
    return -np.log(np.asarray(rgb, dtype=np.float64) / 255.0)


# Optical density of unit stain concentrations (RGB order).
_H_OD = _od((85, 60, 140))  # hematoxylin: dark purple-blue
_E_OD = _od((235, 150, 185))  # eosin: pink
_BG_OD = _od((250, 247, 250))  # glass / mounting medium


# --------------------------------------------------------------------------- #
# geometry helpers
# --------------------------------------------------------------------------- #
@dataclass
class _Gland:
    cy: float
    cx: float
    r0: float  # base radius (px)
    outer: np.ndarray  # complex harmonic coefficients c_k, k = 1..K (c_1 = 0)
    l0: float  # lumen radius relative to the outer boundary
    lumen: np.ndarray  # complex harmonic coefficients of the lumen boundary
    rmax: float  # max outer radius (px)


def _harmonics(rng: np.random.Generator, amps: list[tuple[float, float]]) -> np.ndarray:
    """Complex coefficients c_1..c_K (c_1 = 0) with |c_k| ~ U(lo, hi), random phase."""
    c = np.zeros(len(amps) + 1, dtype=np.complex128)
    for k, (lo, hi) in enumerate(amps, start=2):
        c[k - 1] = rng.uniform(lo, hi) * np.exp(1j * rng.uniform(0.0, 2 * np.pi))
    return c


def _radial_unit_shift(coef: np.ndarray, z: np.ndarray) -> np.ndarray:
    """1 + Re(sum_j coef[j] z^(j+1)) for unit complex z = exp(i theta): a radial shape factor."""
    out = np.ones(z.shape, dtype=np.float32)
    zk = np.ones_like(z)
    for ck in coef:
        zk = zk * z
        if ck != 0:
            out += (ck * zk).real.astype(np.float32)
    return out


_THETA_PROBE = np.exp(1j * np.linspace(0.0, 2 * np.pi, 96, endpoint=False)).astype(np.complex64)


def _safe_shape(coef: np.ndarray, min_factor: float) -> tuple[np.ndarray, float]:
    """Scale harmonics down until the radial factor stays >= min_factor; return (coef, max factor)."""
    f = _radial_unit_shift(coef, _THETA_PROBE)
    dev = 1.0 - float(f.min())
    if dev > 1.0 - min_factor and dev > 0:
        coef = coef * ((1.0 - min_factor) / dev)
        f = _radial_unit_shift(coef, _THETA_PROBE)
    return coef, float(f.max())


def _make_gland(rng: np.random.Generator, malignant: bool) -> tuple[np.ndarray, float, np.ndarray, float]:
    if malignant:
        outer = _harmonics(rng, [(0.05, 0.25), (0.04, 0.14), (0.02, 0.10), (0.0, 0.07), (0.0, 0.05)])
        outer, fmax = _safe_shape(outer, 0.5)
        l0 = rng.uniform(0.2, 0.45)
        lumen = _harmonics(rng, [(0.1, 0.45), (0.0, 0.18), (0.0, 0.12)])
    else:
        outer = _harmonics(rng, [(0.0, 0.18), (0.0, 0.03), (0.0, 0.02)])
        outer, fmax = _safe_shape(outer, 0.7)
        l0 = rng.uniform(0.5, 0.66)
        lumen = _harmonics(rng, [(0.0, 0.08), (0.0, 0.03)])
    return outer, fmax, lumen, l0


def _raster_gland(g: _Gland, lo: int, hi: int, with_lumen: bool = True):
    """Rasterise one gland over its bounding box clipped to the square [lo, hi)^2.

    Returns ``(slices, rho, lumen_rho)`` (slices relative to ``lo``) or None when the box is
    empty. ``rho`` is the distance to the centre normalised by the outer radius in that
    direction (gland: rho <= 1); the lumen is where ``rho < lumen_rho``.
    """
    y0 = max(lo, int(math.floor(g.cy - g.rmax - 1)))
    y1 = min(hi, int(math.ceil(g.cy + g.rmax + 2)))
    x0 = max(lo, int(math.floor(g.cx - g.rmax - 1)))
    x1 = min(hi, int(math.ceil(g.cx + g.rmax + 2)))
    if y0 >= y1 or x0 >= x1:
        return None
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(g.cy))[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(g.cx))[None, :]
    d = np.sqrt(dy * dy + dx * dx)
    z = ((dx + 1j * dy) / np.maximum(d, 1e-6)).astype(np.complex64)
    f = _radial_unit_shift(g.outer, z)
    rho = d / (np.float32(g.r0) * f)
    lum = np.float32(g.l0) * _radial_unit_shift(g.lumen, z) if with_lumen else None
    return (slice(y0 - lo, y1 - lo), slice(x0 - lo, x1 - lo)), rho, lum


def _place_glands(rng: np.random.Generator, size: int, malignant: bool):
    """Place glands; retry (deterministically, same rng) when the gland area fraction is < 0.3."""
    best = None
    for _ in range(4):
        res = _place_once(rng, size, malignant)
        frac = float((res[1] > 0).mean())
        if best is None or frac > best[0]:
            best = (frac, res)
        if frac >= 0.3:
            break
    return best[1]


def _place_once(rng: np.random.Generator, size: int, malignant: bool):
    """Random sequential placement of non-overlapping glands until the target area is reached.

    Candidate centres come from a coarse distance map of the free space; every candidate is
    then checked pixel-exactly against the already placed glands (dilated by a gap), so
    irregular malignant glands can interlock and nearly touch.
    """
    s = size / 256.0
    if malignant:
        n_min, n_max = 6, 12
        r_lo, r_hi = 26.0 * s, 42.0 * s
        gap = rng.uniform(1.5, 4.0) * s
        target = rng.uniform(0.4, 0.55)
    else:
        n_min, n_max = 3, 6
        r_lo, r_hi = 38.0 * s, 60.0 * s
        gap = rng.uniform(8.0, 14.0) * s
        target = rng.uniform(0.36, 0.5)
    r_min = 0.6 * r_lo
    pad = int(round(0.12 * size))
    lo, hi = -pad, size + pad
    f = 4  # coarse grid step for candidate search
    occ = np.zeros((hi - lo, hi - lo), dtype=bool)  # placed glands dilated by the gap (padded canvas)

    glands: list[_Gland] = []
    free = None
    area = 0
    rejects = 0
    r0 = rng.uniform(r_lo, r_hi)
    outer, fmax, lumen, l0 = _make_gland(rng, malignant)
    fmin = float(_radial_unit_shift(outer, _THETA_PROBE).min())
    while len(glands) < n_max:
        if len(glands) >= n_min and area >= target * size * size:
            break
        if free is None:  # recomputed only after a gland was added
            free = ndi.distance_transform_edt(~occ[f // 2 :: f, f // 2 :: f]) * f
        cells = np.flatnonzero(free.ravel() >= r0 * fmin + f)
        if cells.size == 0 or rejects >= 6:
            r0 *= 0.85
            rejects = 0
            if r0 < r_min:
                break
            continue
        c = int(cells[rng.integers(cells.size)])
        cy = lo + (c // free.shape[1]) * f + f // 2 + rng.uniform(-f / 2, f / 2)
        cx = lo + (c % free.shape[1]) * f + f // 2 + rng.uniform(-f / 2, f / 2)
        g = _Gland(float(cy), float(cx), r0, outer, l0, lumen, r0 * fmax)
        ras = _raster_gland(g, lo, hi, with_lumen=False)
        if ras is None:
            rejects += 1
            continue
        sl, rho, _ = ras
        inside = rho <= 1.0
        if (inside & occ[sl]).any():
            rejects += 1
            continue
        full = int(inside.sum())
        ys, xs = sl
        iy0, iy1 = max(ys.start, pad) - ys.start, min(ys.stop, pad + size) - ys.start
        ix0, ix1 = max(xs.start, pad) - xs.start, min(xs.stop, pad + size) - xs.start
        n_in = int(inside[max(iy0, 0) : max(iy1, 0), max(ix0, 0) : max(ix1, 0)].sum())
        if n_in < 0.4 * full:  # mostly outside the field of view
            rejects += 1
            continue
        glands.append(g)
        occ[sl] |= rho <= 1.0 + gap / r0
        free = None
        area += n_in
        rejects = 0
        r0 = rng.uniform(r_lo, r_hi)
        outer, fmax, lumen, l0 = _make_gland(rng, malignant)
        fmin = float(_radial_unit_shift(outer, _THETA_PROBE).min())

    label = np.zeros((size, size), dtype=np.int32)
    rho_map = np.full((size, size), 9.0, dtype=np.float32)
    lum_map = np.zeros((size, size), dtype=np.float32)
    for k, g in enumerate(glands, start=1):
        ras = _raster_gland(g, 0, size)
        if ras is None:
            continue
        sl, rho, lum = ras
        label[sl][rho <= 1.0] = k
        closer = rho < rho_map[sl]
        rho_map[sl][closer] = rho[closer]
        lum_map[sl][closer] = lum[closer]
    return glands, label, rho_map, lum_map


# --------------------------------------------------------------------------- #
# texture helpers
# --------------------------------------------------------------------------- #
def _upsample_linear(a: np.ndarray, d: int, shape: tuple[int, int]) -> np.ndarray:
    """Separable linear interpolation of ``a`` sampled at positions i / d (no BLAS, no threads)."""
    for axis, n_out in enumerate(shape):
        pos = np.arange(n_out, dtype=np.float32) / d
        i0 = np.minimum(pos.astype(np.int64), a.shape[axis] - 2)
        w = pos - i0
        if axis == 0:
            a = a[i0] * (1.0 - w)[:, None] + a[i0 + 1] * w[:, None]
        else:
            a = a[:, i0] * (1.0 - w)[None, :] + a[:, i0 + 1] * w[None, :]
    return a


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise normalised to zero mean / unit std.

    Large sigmas are synthesised on a coarser grid and bilinearly upsampled (much cheaper,
    visually identical for a smooth field).
    """
    d = max(1, int(sigma // 2.5))
    if d == 1:
        n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    else:
        small = (shape[0] // d + 2, shape[1] // d + 2)
        n = ndi.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma / d, mode="wrap")
        n = _upsample_linear(n, d, shape)
    n = n - n.mean()
    n /= n.std() + 1e-6
    return n.astype(np.float32, copy=False)


def _splat_ellipses(
    out: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    ang: np.ndarray,
    amp: np.ndarray,
) -> None:
    """Max-composite anti-aliased filled ellipses (semi-axes a along ``ang``, b across) into ``out``."""
    n = len(cy)
    if n == 0:
        return
    h, w = out.shape
    rad = int(math.ceil(float(max(a.max(), b.max())))) + 1
    off = np.arange(-rad, rad + 1)
    iy = np.rint(cy).astype(np.int64)[:, None, None] + off[None, :, None]
    ix = np.rint(cx).astype(np.int64)[:, None, None] + off[None, None, :]
    dy = (iy - cy[:, None, None]).astype(np.float32)
    dx = (ix - cx[:, None, None]).astype(np.float32)
    c = np.cos(ang).astype(np.float32)[:, None, None]
    s = np.sin(ang).astype(np.float32)[:, None, None]
    u = (dx * c + dy * s) / a.astype(np.float32)[:, None, None]
    v = (dy * c - dx * s) / b.astype(np.float32)[:, None, None]
    d = np.sqrt(u * u + v * v)
    val = np.clip((1.0 - d) * b.astype(np.float32)[:, None, None] + 0.5, 0.0, 1.0) * amp.astype(np.float32)[:, None, None]
    iy, ix = np.broadcast_arrays(iy, ix)
    keep = (val > 0) & (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    np.maximum.at(out.reshape(-1), (iy[keep] * w + ix[keep]), val[keep])


def _gland_nuclei(rng: np.random.Generator, g: _Gland, malignant: bool, s: float):
    """Nuclei (cy, cx, a, b, angle, intensity) of one gland's epithelium."""
    if malignant:
        a_lo, a_hi, b_lo, b_hi = 3.5 * s, 6.5 * s, 2.4 * s, 4.4 * s
        spacing = 2.0 * 3.4 * s + 0.5 * s
        perim = 2 * math.pi * g.r0 * 1.15
        n = int(perim / spacing * rng.uniform(1.3, 1.9))
        theta = rng.uniform(0.0, 2 * math.pi, n)
    else:
        a_lo, a_hi, b_lo, b_hi = 3.1 * s, 4.1 * s, 1.8 * s, 2.3 * s
        spacing = 2.0 * 2.05 * s + rng.uniform(0.8, 1.8) * s
        perim = 2 * math.pi * (g.r0 - 5.0 * s)
        n = max(int(perim / spacing), 8)
        step = 2 * math.pi / n
        theta = rng.uniform(0, step) + np.arange(n) * step + rng.normal(0.0, 0.12 * step, n)
    a = rng.uniform(a_lo, a_hi, n)
    b = np.minimum(rng.uniform(b_lo, b_hi, n), a)
    z = np.exp(1j * theta).astype(np.complex64)
    R = g.r0 * _radial_unit_shift(g.outer, z).astype(np.float64)
    L = R * np.clip(g.l0 * _radial_unit_shift(g.lumen, z).astype(np.float64), 0.0, 1.0)
    hi = R - a - 0.8 * s
    lo = L + a + 0.5 * s
    if malignant:
        r = lo + rng.uniform(0.0, 1.0, n) * np.maximum(hi - lo, 0.0)
        ang = theta + rng.normal(0.0, 0.5, n)
        amp = rng.uniform(1.05, 1.45, n)
    else:
        r = hi - rng.uniform(0.0, 1.2 * s, n)
        ang = theta + rng.normal(0.0, 0.08, n)
        amp = rng.uniform(0.8, 0.95, n)
    r = np.where(lo > hi, 0.5 * (L + R), r)
    cy = g.cy + r * np.sin(theta)
    cx = g.cx + r * np.cos(theta)
    return cy, cx, a, b, ang, amp


def _goblets(rng: np.random.Generator, g: _Gland, s: float):
    """Pale mucin vacuoles (goblet cells) in the apical half of a benign gland's epithelium."""
    n = int(2 * math.pi * g.r0 / (9.0 * s) * rng.uniform(0.4, 1.0))
    theta = rng.uniform(0.0, 2 * math.pi, n)
    z = np.exp(1j * theta).astype(np.complex64)
    R = g.r0 * _radial_unit_shift(g.outer, z).astype(np.float64)
    L = R * np.clip(g.l0 * _radial_unit_shift(g.lumen, z).astype(np.float64), 0.0, 1.0)
    a = rng.uniform(2.8, 4.2, n) * s
    b = rng.uniform(2.0, 3.0, n) * s
    r = L + (R - L) * rng.uniform(0.3, 0.5, n)
    return g.cy + r * np.sin(theta), g.cx + r * np.cos(theta), a, b, theta, rng.uniform(0.6, 0.9, n)


# --------------------------------------------------------------------------- #
# public renderer
# --------------------------------------------------------------------------- #
def render_tissue(rng: np.random.Generator, size: int, malignant: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one synthetic H&E tile.

    Returns ``(rgb, mask, instances)``: RGB ``uint8`` HxWx3, binary gland mask ``bool`` HxW
    (lumen + epithelium) and gland instance ids ``int32`` HxW (0 = background, 1..n).
    Fully determined by the state of ``rng``.
    """
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    s = size / 256.0
    shape = (size, size)
    glands, label, rho, lum = _place_glands(rng, size, malignant)
    mask = label > 0
    lumen = mask & (rho < lum)
    epi = mask & ~lumen

    # ---- stroma: wavy collagen fibres, pale gaps ---------------------------------
    phi = rng.uniform(0.0, math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    warp = _smooth_noise(rng, shape, 16.0 * s) * (8.0 * s) + _smooth_noise(rng, shape, 4.0 * s) * (1.8 * s)
    fib = np.zeros(shape, dtype=np.float32)
    weight = 1.0 / (1.0 + np.exp(-2.0 * _smooth_noise(rng, shape, 20.0 * s)))  # two fibre families
    for k, w in enumerate((weight, 1.0 - weight)):
        p_k = phi + k * rng.uniform(0.5, 1.2)
        v = -xx * math.sin(p_k) + yy * math.cos(p_k)
        period = rng.uniform(6.0, 10.0) * s
        fib += w * (0.5 + 0.5 * np.sin((v + (1.0 - 2.0 * k) * warp) * np.float32(2 * math.pi / period)))
    patch = _smooth_noise(rng, shape, 6.0 * s)
    fine = _smooth_noise(rng, shape, 0.8)
    strength = np.clip(0.5 + 0.5 * _smooth_noise(rng, shape, 12.0 * s), 0.0, 1.0)  # where fibres show
    texture = 0.6 + 0.12 * patch + 0.06 * fine + 0.35 * (fib - 0.5) * strength
    clefts = np.clip((0.22 - fib) * 5.0, 0.0, 1.0) * np.clip(strength * 2.0 - 0.8, 0.0, 1.0)
    gaps = np.maximum(np.clip((-patch - 1.1) * 1.5, 0.0, 1.0), 0.8 * clefts)  # loose pale areas
    e_str = rng.uniform(1.0, 1.25)
    cE = e_str * texture * (1.0 - 0.65 * gaps)
    cH = np.full(shape, rng.uniform(0.02, 0.045), dtype=np.float32) + 0.015 * fine

    # optional retraction halo around glands
    if glands and rng.random() < 0.6:
        r_mean = float(np.mean([g.r0 for g in glands]))
        halo = (~mask) & (rho < 1.0 + rng.uniform(1.0, 2.5) * s / r_mean) & (patch > rng.uniform(-1.0, 0.3))
        cE = np.where(halo, cE * 0.15, cE)
        cH = np.where(halo, cH * 0.3, cH)

    # ---- epithelium and lumen ---------------------------------------------------
    if malignant:
        ce_epi, ch_epi = rng.uniform(0.58, 0.7), rng.uniform(0.24, 0.32)
    else:
        ce_epi, ch_epi = rng.uniform(0.68, 0.8), rng.uniform(0.14, 0.2)
    tex_epi = 1.0 + 0.12 * fine + 0.06 * patch
    cE = np.where(epi, ce_epi * tex_epi, cE)
    cH = np.where(epi, ch_epi * tex_epi, cH)
    lumen_e = 0.03 + 0.02 * fine
    if malignant and rng.random() < 0.7:  # eosinophilic secretion / debris in the lumen
        deb = np.clip(_smooth_noise(rng, shape, 2.0 * s) - 0.6, 0.0, 1.0)
        lumen_e = lumen_e + 0.6 * deb
    cE = np.where(lumen, lumen_e, cE)
    cH = np.where(lumen, 0.01, cH)

    # ---- goblet cells (benign) ---------------------------------------------------
    if not malignant and glands:
        gob = np.zeros(shape, dtype=np.float32)
        parts = [_goblets(rng, g, s) for g in glands]
        _splat_ellipses(gob, *(np.concatenate(p) for p in zip(*parts)))
        gob *= epi
        cE = cE * (1.0 - 0.8 * gob)
        cH = cH * (1.0 - gob) + 0.1 * gob

    # ---- nuclei ------------------------------------------------------------------
    nuc = np.zeros(shape, dtype=np.float32)
    if glands:
        parts = [_gland_nuclei(rng, g, malignant, s) for g in glands]
        _splat_ellipses(nuc, *(np.concatenate(p) for p in zip(*parts)))
        nuc *= mask
    # stroma nuclei: elongated fibroblasts aligned with the fibres + round lymphocytes
    dist = ndi.distance_transform_edt(~mask) if glands else np.full(shape, np.inf)
    n_fib = int(rng.uniform(25, 40))  # everything scales with size (zoom), so counts do not
    n_lym = int(rng.uniform(30, 60)) if malignant else int(rng.uniform(10, 25))
    n_all = n_fib + n_lym
    cy = rng.uniform(0, size, n_all)
    cx = rng.uniform(0, size, n_all)
    a = np.concatenate([rng.uniform(3.0, 5.5, n_fib) * s, rng.uniform(1.9, 2.6, n_lym) * s])
    b = np.concatenate([rng.uniform(1.0, 1.6, n_fib) * s, np.zeros(n_lym)])
    b[n_fib:] = a[n_fib:] * rng.uniform(0.85, 1.0, n_lym)
    ang = np.concatenate([np.full(n_fib, phi) + rng.normal(0.0, 0.25, n_fib), rng.uniform(0, math.pi, n_lym)])
    amp = np.concatenate([rng.uniform(0.75, 0.95, n_fib), rng.uniform(1.0, 1.25, n_lym)])
    ok = dist[np.clip(cy.astype(int), 0, size - 1), np.clip(cx.astype(int), 0, size - 1)] > a + 1.5 * s
    snuc = np.zeros(shape, dtype=np.float32)
    _splat_ellipses(snuc, cy[ok], cx[ok], a[ok], b[ok], ang[ok], amp[ok])
    snuc *= ~mask
    nuc = np.maximum(nuc, snuc)

    chrom = 1.0 + 0.18 * fine
    nuc_cov = np.minimum(nuc, 1.0)
    cH = cH * (1.0 - nuc_cov) + nuc * chrom
    cE = cE * (1.0 - nuc_cov) + 0.15 * nuc_cov

    # ---- optics: blur, stain variation, Beer-Lambert, noise ----------------------
    cH = ndi.gaussian_filter(cH.astype(np.float32), 0.7 * s if s > 1 else 0.7)
    cE = ndi.gaussian_filter(cE.astype(np.float32), 0.7 * s if s > 1 else 0.7)
    h_vec = _H_OD * rng.uniform(0.88, 1.12) * (1.0 + rng.normal(0.0, 0.04, 3))
    e_vec = _E_OD * rng.uniform(0.85, 1.15) * (1.0 + rng.normal(0.0, 0.04, 3))
    od = (
        _BG_OD.astype(np.float32)
        + cH[..., None] * h_vec.astype(np.float32)
        + cE[..., None] * e_vec.astype(np.float32)
    )
    rgb = 255.0 * np.exp(-od)
    rgb += rng.normal(0.0, 2.5, rgb.shape).astype(np.float32)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return rgb, mask, label
