"""Tests for histowsss.ops.path_index and histowsss.ops.random_walk (IRN random walk)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histowsss.ops.path_index import edge_affinities, neighbour_offsets, path_points
from histowsss.ops.random_walk import (
    affinity_matrix_dense,
    dense_random_walk,
    random_walk,
    transition_matrix_dense,
)


def _inputs(h: int, w: int, c: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    boundary = torch.rand(h, w, generator=g) ** 3
    cams = torch.rand(c, h, w, generator=g)
    return cams, boundary


def _naive_affinity(boundary: np.ndarray, radius: int, beta: float) -> np.ndarray:
    """Per-pixel-pair construction following the IRN reference rules literally."""
    h, w = boundary.shape
    n = h * w
    a = np.eye(n)
    for y in range(h):
        for x in range(w):
            for ty in range(h):
                for tx in range(w):
                    dy, dx = ty - y, tx - x
                    if (dy, dx) == (0, 0) or dy * dy + dx * dx >= radius * radius:
                        continue
                    lsq = dy * dy + dx * dx
                    m = 0.0
                    for py in range(min(0, dy), max(0, dy) + 1):
                        for px in range(min(0, dx), max(0, dx) + 1):
                            if (dy * px - dx * py) ** 2 / lsq < 1:
                                m = max(m, boundary[y + py, x + px])
                    a[y * w + x, ty * w + tx] = (1 - m) ** beta
    return a


# ----------------------------------------------------------------- path index


def test_neighbour_offsets_half_plane():
    offs = neighbour_offsets(5)
    assert len(offs) == 34 == len(set(offs))
    full = set(offs) | {(-dy, -dx) for dy, dx in offs}
    assert len(full) == 68  # no offset is the negative of another
    disc = {(dy, dx) for dy in range(-5, 6) for dx in range(-5, 6) if 0 < dy * dy + dx * dx < 25}
    assert full == disc
    assert all(dy > 0 or (dy == 0 and dx > 0) for dy, dx in offs)
    assert neighbour_offsets(1) == []
    with pytest.raises(ValueError):
        neighbour_offsets(0)


def test_path_points():
    assert path_points(0, 3) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert path_points(1, 1) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for dy, dx in neighbour_offsets(5):
        pts = path_points(dy, dx)
        assert pts[0] == (0, 0) and pts[-1] == (dy, dx)
        # every column / row between the end points is crossed (no gaps in the wall test)
        assert {p[1] for p in pts} == set(range(min(0, dx), max(0, dx) + 1))
        assert {p[0] for p in pts} == set(range(0, dy + 1))


def test_edge_affinities_match_naive():
    _, b = _inputs(7, 9, seed=3)
    radius, beta = 4, 3.0
    offsets, aff = edge_affinities(b, radius, beta)
    assert aff.shape == (len(offsets), 7, 9) and aff.dtype == b.dtype
    naive = _naive_affinity(b.double().numpy(), radius, beta)
    for k, (dy, dx) in enumerate(offsets):
        for y in range(7):
            for x in range(9):
                ty, tx = y + dy, x + dx
                exp = naive[y * 9 + x, ty * 9 + tx] if 0 <= ty < 7 and 0 <= tx < 9 else 0.0
                assert aff[k, y, x].item() == pytest.approx(exp, abs=1e-6)
    dense = affinity_matrix_dense(b.double(), radius, beta).numpy()
    np.testing.assert_allclose(dense, naive, atol=1e-12)


def test_dense_reference_matches_naive_formula():
    cams, b = _inputs(6, 7, c=2, seed=4)
    radius, beta, exp_times = 3, 10.0, 3
    a = _naive_affinity(b.double().numpy(), radius, beta)
    t = a / a.sum(axis=0, keepdims=True)  # reference: column-normalised
    t = np.linalg.matrix_power(t, 2**exp_times)
    x = (cams.double() * (1 - b.double())).reshape(2, -1).numpy()
    expected = (x @ t).reshape(2, 6, 7)
    got = dense_random_walk(cams.double(), b.double(), radius, beta, exp_times).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)
    tm = transition_matrix_dense(b.double(), radius, beta)
    np.testing.assert_allclose(tm.sum(0).numpy(), 1.0, atol=1e-12)


# ----------------------------------------------------------------- random walk


@pytest.mark.parametrize("method", ["stencil", "csr"])
def test_sparse_matches_dense_16(method):
    cams, b = _inputs(16, 16)
    sparse = random_walk(cams, b, radius=5, beta=10.0, exp_times=8, method=method)
    dense = dense_random_walk(cams, b, radius=5, beta=10.0, exp_times=8)
    assert sparse.shape == cams.shape and sparse.dtype == torch.float32
    assert (sparse - dense).abs().max().item() <= 1e-4
    # float64 sparse vs float64 dense: same operator up to round-off
    s64 = random_walk(cams.double(), b.double(), method=method)
    d64 = dense_random_walk(cams.double(), b.double())
    assert s64.dtype == torch.float64
    assert (s64 - d64).abs().max().item() <= 1e-10


def test_sparse_float32_compute_close():
    cams, b = _inputs(16, 20)
    s32 = random_walk(cams, b, compute_dtype=None)
    s64 = random_walk(cams.double(), b.double())
    assert (s32.double() - s64).abs().max().item() <= 3e-4


def test_non_square_and_small_radius():
    cams, b = _inputs(11, 17, c=2, seed=1)
    for radius in (1, 2, 3):
        s = random_walk(cams.double(), b.double(), radius=radius, beta=2.0, exp_times=4)
        d = dense_random_walk(cams.double(), b.double(), radius=radius, beta=2.0, exp_times=4)
        assert (s - d).abs().max().item() <= 1e-10
    # exp_times=0 is a single step; radius=1 has no edges -> identity on scaled cams
    s = random_walk(cams, b, radius=1, exp_times=0)
    torch.testing.assert_close(s, cams * (1 - b))
    s = random_walk(cams, b, radius=1, exp_times=0, scale_by_boundary=False)
    torch.testing.assert_close(s, cams)


@pytest.mark.slow
def test_sparse_matches_dense_64():
    cams, b = _inputs(64, 64, c=3, seed=2)
    sparse = random_walk(cams, b, radius=5, beta=10.0, exp_times=8)
    dense = dense_random_walk(cams, b, radius=5, beta=10.0, exp_times=8)
    assert (sparse - dense).abs().max().item() <= 1e-4


def test_boundary_wall_blocks_propagation():
    h, w = 24, 24
    b = torch.zeros(h, w)
    b[:, 12] = 1.0  # closed vertical wall, one pixel thick
    cams = torch.zeros(1, h, w)
    cams[0, 10:14, 2:5] = 1.0  # activation on the left only
    out = random_walk(cams, b, radius=5, beta=10.0, exp_times=8)
    assert out[0, :, 12:].abs().max().item() == 0.0  # nothing reaches the wall or beyond
    assert out[0, :, :12].min().item() > 0.0  # spreads over the whole left part
    # without the wall the right part is reached
    free = random_walk(cams, torch.zeros(h, w), radius=5, beta=10.0, exp_times=8)
    assert free[0, :, 13:].min().item() > 0.0


def test_no_boundary_smooths():
    g = torch.Generator().manual_seed(5)
    cams = torch.rand(2, 32, 32, generator=g)
    b = torch.zeros(32, 32)
    out = random_walk(cams, b, exp_times=6)
    assert out.std(dim=(1, 2)).max() < 0.1 * cams.std(dim=(1, 2)).min()
    # weighted averages: maximum principle, constants preserved
    assert out.min() >= cams.min() - 1e-6 and out.max() <= cams.max() + 1e-6
    const = torch.full((1, 32, 32), 0.7)
    torch.testing.assert_close(random_walk(const, b), const)


def test_input_validation():
    cams, b = _inputs(16, 16)
    with pytest.raises(ValueError, match="shape mismatch"):
        random_walk(cams, b[:, :15])
    with pytest.raises(ValueError, match="shape mismatch"):
        dense_random_walk(cams[:, :8], b)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        random_walk(cams[0], b)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        random_walk(cams, b[None])
    with pytest.raises(ValueError, match="exp_times"):
        random_walk(cams, b, exp_times=-1)
    with pytest.raises(ValueError, match="radius"):
        random_walk(cams, b, radius=0)
    with pytest.raises(ValueError, match="beta"):
        random_walk(cams, b, beta=-1.0)
    with pytest.raises(ValueError, match="method"):
        random_walk(cams, b, method="magic")
    with pytest.raises(ValueError, match="compute_dtype"):
        random_walk(cams, b, compute_dtype=torch.int32)
    with pytest.raises(TypeError):
        random_walk(cams.long(), b)
