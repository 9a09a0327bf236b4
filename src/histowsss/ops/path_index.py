"""Neighbour offsets, straight-line paths and boundary-based affinities (IRN).

Re-implementation of the pixel-pair indexing used by IRN (Ahn, Cho & Kwak,
CVPR 2019; reference code ``misc/indexing.py``, ``PathIndex`` and
``edge_to_affinity``), written for shifted-tensor evaluation instead of
flat index lists.

Conventions (identical to the reference):

* Offsets ``(dy, dx)`` cover one half-plane of the disc ``dy**2 + dx**2 <
  radius**2`` (strict inequality): ``(0, dx)`` for ``1 <= dx < radius`` and
  ``(dy, dx)`` for ``1 <= dy < radius``, ``|dx| < radius``. The opposite
  half-plane is obtained by symmetry (``a_ij = a_ji``) when a graph is built,
  so every unordered pair is stored exactly once.
* The path of an offset is every grid point ``(y, x)`` of the bounding box of
  ``(0, 0)`` and ``(dy, dx)`` whose squared perpendicular distance to the line
  through them is ``< 1``; it includes both end points.
* The affinity of a pair is ``(1 - max_{k on path} B_k) ** beta``.
"""

from __future__ import annotations

import torch

__all__ = ["neighbour_offsets", "path_points", "check_boundary", "edge_affinities"]


def _check_radius(radius: int) -> int:
    if isinstance(radius, bool) or not isinstance(radius, int):
        raise TypeError(f"radius must be an int, got {type(radius).__name__}")
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    return radius


def neighbour_offsets(radius: int) -> list[tuple[int, int]]:
    """Half-plane neighbour offsets ``(dy, dx)`` with ``dy**2 + dx**2 < radius**2``.

    Ordered as in IRN's search: first the horizontal offsets ``(0, 1) ..
    (0, radius - 1)``, then row by row ``dy = 1 .. radius - 1`` with ``dx``
    increasing. ``(0, 0)`` is never included. ``radius=5`` gives 34 offsets.
    """
    radius = _check_radius(radius)
    offsets: list[tuple[int, int]] = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dy * dy + dx * dx < radius * radius:
                offsets.append((dy, dx))
    return offsets


def path_points(dy: int, dx: int) -> list[tuple[int, int]]:
    """Grid points on the straight path from ``(0, 0)`` to ``(dy, dx)``.

    Both end points are included (the reference takes the boundary maximum
    over them too). Points are sorted by distance from the source, ``(0, 0)``
    first and ``(dy, dx)`` last.
    """
    if (dy, dx) == (0, 0):
        return [(0, 0)]
    length_sq = dy * dy + dx * dx
    points = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            # squared distance of (y, x) to the line through 0 and (dy, dx);
            # exact integer test of ``(dy*x - dx*y)**2 / length_sq < 1``
            if (dy * x - dx * y) ** 2 < length_sq:
                points.append((y, x))
    points.sort(key=lambda p: (abs(p[0]) + abs(p[1]), p))
    return points


def check_boundary(boundary: torch.Tensor) -> None:
    """Raise a clear error unless ``boundary`` is a floating ``(H, W)`` tensor."""
    if not isinstance(boundary, torch.Tensor):
        raise TypeError("boundary must be a torch.Tensor")
    if boundary.ndim != 2:
        raise ValueError(f"boundary must have shape (H, W), got {tuple(boundary.shape)}")
    if not boundary.is_floating_point():
        raise TypeError(f"boundary must be a floating tensor, got {boundary.dtype}")


def edge_affinities(
    boundary: torch.Tensor, radius: int, beta: float
) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Affinities of every pixel to its half-plane neighbours.

    Args:
        boundary: ``(H, W)`` class-boundary probabilities in ``[0, 1]``.
        radius: neighbourhood radius (offsets with ``dy**2 + dx**2 < radius**2``).
        beta: exponent applied to ``1 - max boundary``.

    Returns:
        ``(offsets, aff)`` where ``offsets`` is :func:`neighbour_offsets` and
        ``aff[k, y, x] = (1 - max_path B) ** beta`` is the affinity between
        ``(y, x)`` and ``(y + dy_k, x + dx_k)``; it is 0 where the target lies
        outside the image. Same device and dtype as ``boundary``.

    Implemented with one shifted-tensor maximum per path point (no loop over
    pixels). Values of ``1 - max B`` are clamped at 0 so slightly
    out-of-range boundaries cannot produce NaNs.
    """
    check_boundary(boundary)
    beta = float(beta)
    if not beta >= 0 or beta == float("inf"):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    offsets = neighbour_offsets(radius)
    height, width = boundary.shape
    aff = boundary.new_zeros((len(offsets), height, width))
    for k, (dy, dx) in enumerate(offsets):
        # source region whose target (y + dy, x + dx) is inside the image
        y0, y1 = 0, height - dy  # dy >= 0
        x0, x1 = max(0, -dx), min(width, width - dx)
        if y1 <= y0 or x1 <= x0:
            continue
        pmax = None
        for py, px in path_points(dy, dx):
            view = boundary[y0 + py : y1 + py, x0 + px : x1 + px]
            pmax = view.clone() if pmax is None else torch.maximum(pmax, view)
        aff[k, y0:y1, x0:x1] = (1.0 - pmax).clamp_(min=0.0).pow_(beta)
    return offsets, aff
