"""Boundary-aware random walk of CAMs (IRN inference, ``propagate_to_edge``).

Re-implementation of the propagation step of IRN (Ahn, Cho & Kwak, CVPR
2019; reference ``misc/indexing.py``: ``edge_to_affinity``,
``affinity_sparse2dense``, ``to_transition_matrix``, ``propagate_to_edge``).

Graph (identical to the reference): pixels of the ``(H, W)`` stride-4 grid
are vertices; pixel pairs closer than ``radius`` (half-plane offsets of
:func:`histowsss.ops.path_index.neighbour_offsets`, stored in both
directions) are joined with weight ``a_ij = (1 - max_{k on path ij} B_k) **
beta``; every vertex has a self loop of weight 1. With ``A`` that symmetric
matrix and ``D = diag(A 1)``, the reference forms ``T = A D^-1`` (each column
sums to one) and computes, for CAMs flattened to ``(C, HW)``::

    rw = (cams * (1 - B)) @ T ** (2 ** exp_times)

i.e. ``2 ** exp_times`` steps of ``x_j <- sum_i a_ij x_i / d_j`` (a weighted
average over the neighbourhood of ``j``).

Implementations:

* :func:`random_walk` (sparse, use this): memory linear in pixels. The
  default ``method="stencil"`` applies the transition as a spatially varying
  stencil, ``2 * K + 1`` shifted multiply-adds per step (``K`` = number of
  half-plane offsets, 34 for ``radius=5``), ``2 ** exp_times`` steps. This is
  exact (same operator, no truncation) and was the fastest CPU option measured
  with 2 threads (``bench/random_walk.py``; 512 x 512 grid = 2048 px image,
  C=2, 256 steps: 9.6 s with float64 accumulation, 4.6 s in float32, versus
  35 s for ``method="csr"``, i.e. ``torch.sparse`` CSR x dense products of the
  same operator, which also stores int64 indices). Repeated squaring of the sparse
  matrix is not used: each squaring doubles the stencil radius (about 4x the
  non-zeros) while only halving the number of steps, so it costs more time
  and memory.
* :func:`dense_random_walk` (reference formulation, tests/benchmarks only):
  builds the dense ``HW x HW`` matrix and squares it ``exp_times`` times.

Threads: each step is ~70 small element-wise ops; on a shared/oversubscribed
CPU spinning OpenMP threads can make them 40-100x slower. Set
``OMP_WAIT_POLICY=PASSIVE`` (before starting Python) or use
``torch.set_num_threads(1)`` there.

Precision: 256 float32 steps accumulate rounding error of about 1e-4 (the
dense float32 squarings about 3e-5), so by default the sparse walk
accumulates in float64 on CPU and CUDA (``compute_dtype="auto"``; about 1.8x
the float32 time, error about 1e-8) and returns the input dtype.
``compute_dtype=None`` computes in the input dtype.

What the caller does afterwards (reference ``step/make_sem_seg_labels.py``),
not part of this module: the walk is run on the foreground CAMs only (no
background channel); the result is upsampled x4 bilinearly
(``align_corners=False``), cropped to the original image size, divided by its
global maximum, a constant background channel ``sem_seg_bg_thres`` is
prepended, and the argmax over channels (mapped through the class keys) is
the pseudo label.
"""

from __future__ import annotations

import warnings

import torch

from histowsss.ops.path_index import check_boundary, edge_affinities

__all__ = ["random_walk", "dense_random_walk", "transition_matrix_dense", "affinity_matrix_dense"]

_METHODS = ("stencil", "csr")


def _validate(
    cams: torch.Tensor | None,
    boundary: torch.Tensor,
    radius: int,
    beta: float,
    exp_times: int,
) -> None:
    check_boundary(boundary)
    if cams is not None:
        if not isinstance(cams, torch.Tensor):
            raise TypeError("cams must be a torch.Tensor")
        if cams.ndim != 3:
            raise ValueError(f"cams must have shape (C, H, W), got {tuple(cams.shape)}")
        if not cams.is_floating_point():
            raise TypeError(f"cams must be a floating tensor, got {cams.dtype}")
        if tuple(cams.shape[1:]) != tuple(boundary.shape):
            raise ValueError(
                "shape mismatch: cams spatial shape "
                f"{tuple(cams.shape[1:])} (cams shape {tuple(cams.shape)}) != boundary "
                f"shape {tuple(boundary.shape)}; both must be on the same stride-4 grid"
            )
        if cams.device != boundary.device:
            raise ValueError(f"cams on {cams.device} but boundary on {boundary.device}")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f"radius must be an int >= 1, got {radius!r}")
    if isinstance(exp_times, bool) or not isinstance(exp_times, int) or exp_times < 0:
        raise ValueError(f"exp_times must be an int >= 0, got {exp_times!r}")
    beta = float(beta)
    if not beta >= 0 or beta == float("inf"):
        raise ValueError(f"beta must be finite and >= 0, got {beta!r}")


def _stencil_weights(
    boundary: torch.Tensor, radius: int, beta: float
) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Full (both half-planes) offsets and row-normalised stencil weights.

    Returns ``(offsets, w)`` with ``w`` of shape ``(2K + 1, H, W)``; entry
    ``w[m, y, x]`` multiplies ``x[y + dy_m, x + dx_m]`` in one walk step, the
    first offset is ``(0, 0)`` (self loop). ``w.sum(0) == 1`` everywhere.
    """
    half, aff = edge_affinities(boundary, radius, beta)
    k = len(half)
    height, width = boundary.shape
    w = boundary.new_zeros((2 * k + 1, height, width))
    w[0] = 1.0
    w[1 : k + 1] = aff
    for i, (dy, dx) in enumerate(half):
        # weight of the reverse edge j -> j - d at target j equals aff[i] at j - d
        y0, y1 = dy, height
        x0, x1 = max(0, dx), min(width, width + dx)
        if y1 > y0 and x1 > x0:
            w[k + 1 + i, y0:y1, x0:x1] = aff[i, y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    w /= w.sum(dim=0, keepdim=True)
    offsets = [(0, 0)] + list(half) + [(-dy, -dx) for dy, dx in half]
    return offsets, w


def _walk_stencil(
    x: torch.Tensor, offsets: list[tuple[int, int]], w: torch.Tensor, steps: int
) -> torch.Tensor:
    c, height, width = x.shape
    p = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    buf = x.new_zeros((c, height + 2 * p, width + 2 * p))
    interior = buf[:, p : p + height, p : p + width]
    views = [buf[:, p + dy : p + dy + height, p + dx : p + dx + width] for dy, dx in offsets[1:]]
    ws = list(w.unbind(0))
    out = torch.empty_like(x)
    for _ in range(steps):
        interior.copy_(x)
        torch.mul(x, ws[0], out=out)
        for wm, view in zip(ws[1:], views):
            out.addcmul_(view, wm)
        x, out = out, x
    return x


def _transition_csr(offsets: list[tuple[int, int]], w: torch.Tensor) -> torch.Tensor:
    """Row-stochastic ``P`` (HW x HW, CSR) with ``x_new = P @ x``.

    Built directly in CSR order: offsets sorted by ``(dy, dx)`` give
    increasing column indices within each row.
    """
    m, height, width = w.shape
    dev = w.device
    order = sorted(range(m), key=lambda i: offsets[i])
    ys = torch.arange(height, device=dev).view(-1, 1, 1)
    xs = torch.arange(width, device=dev).view(1, -1, 1)
    dys = torch.tensor([offsets[i][0] for i in order], device=dev).view(1, 1, -1)
    dxs = torch.tensor([offsets[i][1] for i in order], device=dev).view(1, 1, -1)
    ty, tx = ys + dys, xs + dxs  # (H, W, M)
    valid = (ty >= 0) & (ty < height) & (tx >= 0) & (tx < width)
    cols = (ty * width + tx)[valid]
    vals = w[order].permute(1, 2, 0)[valid]
    counts = valid.reshape(height * width, m).sum(dim=1)
    crow = torch.zeros(height * width + 1, dtype=torch.int64, device=dev)
    torch.cumsum(counts, dim=0, out=crow[1:])
    n = height * width
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, cols, vals, (n, n), check_invariants=False)


def _resolve_compute_dtype(compute_dtype: torch.dtype | str | None, x: torch.Tensor) -> torch.dtype:
    if compute_dtype is None:
        return x.dtype
    if compute_dtype == "auto":
        return torch.float64 if x.device.type in ("cpu", "cuda") else x.dtype
    if isinstance(compute_dtype, torch.dtype) and compute_dtype.is_floating_point:
        return compute_dtype
    raise ValueError(f"compute_dtype must be 'auto', None or a floating torch.dtype, got {compute_dtype!r}")


def random_walk(
    cams: torch.Tensor,
    boundary: torch.Tensor,
    radius: int = 5,
    beta: float = 10.0,
    exp_times: int = 8,
    *,
    scale_by_boundary: bool = True,
    method: str = "stencil",
    compute_dtype: torch.dtype | str | None = "auto",
) -> torch.Tensor:
    """Sparse IRN random walk of ``cams`` (C, H, W) guided by ``boundary`` (H, W).

    Equivalent to the reference ``propagate_to_edge`` (and to
    :func:`dense_random_walk`) but with memory linear in ``H * W``: the
    transition is applied ``2 ** exp_times`` times instead of being squared.

    Args:
        cams: ``(C, H, W)`` foreground class activation maps on the same grid
            as ``boundary`` (no background channel, see module docstring).
        boundary: ``(H, W)`` class-boundary probabilities in ``[0, 1]``.
        radius: neighbourhood radius (reference: 5).
        beta: affinity exponent (reference: 10).
        exp_times: the walk uses ``T ** (2 ** exp_times)`` (reference: 8).
        scale_by_boundary: multiply ``cams`` by ``1 - boundary`` before the
            walk, as the reference does (default True).
        method: ``"stencil"`` (default, fastest on CPU) or ``"csr"``
            (``torch.sparse`` CSR products); both are exact.
        compute_dtype: accumulation dtype; ``"auto"`` (default) is float64 on
            CPU/CUDA and the input dtype elsewhere, ``None`` the input dtype.

    Returns:
        ``(C, H, W)`` propagated maps, same device and dtype as ``cams``
        (float32 expected).

    Raises:
        ValueError: bad shapes (including ``cams``/``boundary`` grid
            mismatch), devices or parameters.
    """
    _validate(cams, boundary, radius, beta, exp_times)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    cdt = _resolve_compute_dtype(compute_dtype, cams)
    with torch.no_grad():
        b = boundary.to(dtype=cdt)
        x = cams.to(dtype=cdt)
        x = (x * (1.0 - b) if scale_by_boundary else x.clone()).contiguous()
        steps = 2**exp_times
        offsets, w = _stencil_weights(b, radius, beta)
        if method == "stencil":
            out = _walk_stencil(x, offsets, w, steps)
        else:
            c, height, width = x.shape
            p = _transition_csr(offsets, w)
            del w
            v = x.reshape(c, -1).t().contiguous()
            for _ in range(steps):
                v = torch.sparse.mm(p, v)
            out = v.t().reshape(c, height, width)
    return out.to(dtype=cams.dtype).contiguous()


def affinity_matrix_dense(boundary: torch.Tensor, radius: int = 5, beta: float = 10.0) -> torch.Tensor:
    """Dense symmetric affinity matrix ``A`` (HW x HW) with unit self loops.

    ``A[i, j] = (1 - max path B) ** beta`` for pairs within ``radius``, 1 on
    the diagonal, 0 elsewhere. Row-major pixel indexing ``i = y * W + x``.
    Tests/benchmarks only: ``(HW) ** 2`` memory.
    """
    _validate(None, boundary, radius, beta, 0)
    height, width = boundary.shape
    n = height * width
    offsets, aff = edge_affinities(boundary, radius, beta)
    a = boundary.new_zeros((n, n))
    idx = torch.arange(n, device=boundary.device).view(height, width)
    for k, (dy, dx) in enumerate(offsets):
        y1 = height - dy
        x0, x1 = max(0, -dx), min(width, width - dx)
        if y1 <= 0 or x1 <= x0:
            continue
        src = idx[:y1, x0:x1].reshape(-1)
        dst = idx[dy : dy + y1, x0 + dx : x1 + dx].reshape(-1)
        val = aff[k, :y1, x0:x1].reshape(-1)
        a[src, dst] = val
        a[dst, src] = val
    a.diagonal().fill_(1.0)
    return a


def transition_matrix_dense(boundary: torch.Tensor, radius: int = 5, beta: float = 10.0) -> torch.Tensor:
    """Reference transition ``T = A D^-1`` (columns sum to 1), not yet powered.

    Applied as ``x_flat @ T`` with CAMs flattened to ``(C, HW)``.
    """
    a = affinity_matrix_dense(boundary, radius, beta)
    return a / a.sum(dim=0, keepdim=True)


def dense_random_walk(
    cams: torch.Tensor,
    boundary: torch.Tensor,
    radius: int = 5,
    beta: float = 10.0,
    exp_times: int = 8,
    *,
    scale_by_boundary: bool = True,
) -> torch.Tensor:
    """Reference formulation: dense ``T``, squared ``exp_times`` times, ``x @ T``.

    Same signature and result as :func:`random_walk`; ``O((HW) ** 2)`` memory
    and ``O(exp_times * (HW) ** 3)`` time. For tests and benchmarks only.
    """
    _validate(cams, boundary, radius, beta, exp_times)
    boundary = boundary.to(dtype=cams.dtype)
    c, height, width = cams.shape
    with torch.no_grad():
        t = transition_matrix_dense(boundary, radius, beta)
        for _ in range(exp_times):
            t = t @ t
        x = cams * (1.0 - boundary) if scale_by_boundary else cams
        rw = x.reshape(c, height * width) @ t
    return rw.reshape(c, height, width)
