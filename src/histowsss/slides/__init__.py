"""Whole-slide images: open a slide, find its tissue, lay a tile grid over it, then either cut training tiles
(``histowsss data tiles``, slide labels inherited by every tile) or segment it tile by tile and stitch the result
(``histowsss predict`` on a slide).

Modules, in the order the data flows: :mod:`~histowsss.slides.reader` (openslide, tiffslide fallback),
:mod:`~histowsss.slides.tissue` (tissue mask on a thumbnail), :mod:`~histowsss.slides.grid` (tiles at the
network's resolution), :mod:`~histowsss.slides.tiles` (tile folder + manifest for training),
:mod:`~histowsss.slides.inference` (resumable tiled inference and stitching).
"""
