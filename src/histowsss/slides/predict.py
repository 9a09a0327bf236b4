"""Segment whole-slide images with a run's network and write the same outputs as for images, plus a summary.

Per slide ``<stem>``, into the output folder:

* ``<stem>_labels.png``: class ids (uint8) on the output grid (``out_downsample`` level-0 pixels per pixel);
* ``<stem>_prob.npz``: ``probs`` float16 (C, h, w) on that grid, ``classes``, ``out_downsample``,
  ``level0_size`` (H, W);
* ``<stem>_overlay.png``: the slide at the label map's resolution (longest side at most 4096 px) with the classes
  tinted and outlined;
* ``<stem>_tissue.png``: the tissue mask the tiles were chosen from (thumbnail resolution);
* ``<stem>.geojson``: QuPath annotations in level-0 pixel coordinates of the slide;
* ``<stem>_slide.json``: backend, level-0 size, mpp, working downsample, tiles, timings, and the area of every
  class (level-0 pixels, and mm^2 when the slide's mpp is known), of the tissue mask, and of the tissue mask joined
  with every pixel called a non-background class (the basis of the slide's percentages in ``predictions.csv``).

The network sees the slide at the resolution of its training images (``data.mpp / data.image_scale`` microns per
pixel, or ``--downsample``). Reinhard stain normalisation, when the run uses it, maps every tile with the slide's
own LAB statistics (measured on the thumbnail's tissue), not the tile's. Finished tiles are cached in
``<stem>.partial/`` next to the outputs, so a killed run continues where it stopped; the cache is removed once
the outputs are written. The image-level gate (``eval_seg.image_gate``) is not applied to slides: it decides for
a whole image, and a slide holds many regions.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from histowsss.data.io import image_stem


@dataclass
class SlideOptions:
    """How whole-slide inputs are read and tiled (``histowsss predict`` options)."""

    downsample: float | None = None
    slide_mpp: float | None = None
    train_mpp: float | None = None
    tile_size: int = 1024
    margin: int = 64
    out_factor: int = 4
    tissue_threshold: float | None = None
    backend: str = "auto"
    no_crop: bool = False  # GeoJSON in the uncropped level-0 frame (QuPath images opened with --no-crop)


SLIDE_OUTPUT_SUFFIXES = ("_labels.png", "_prob.npz", "_overlay.png", "_tissue.png", ".geojson", "_slide.json")


def cell_areas(shape: tuple[int, int], out_downsample: float, width: int, height: int) -> np.ndarray:
    """Level-0 pixel area of every cell of an output grid of ``shape`` whose cells are ``out_downsample`` level-0
    pixels wide: the last row and column, which the grid rounds up past the slide's edge, count their part inside."""
    d = float(out_downsample)
    rows = np.clip((height - np.arange(shape[0]) * d) / d, 0.0, 1.0)
    cols = np.clip((width - np.arange(shape[1]) * d) / d, 0.0, 1.0)
    return np.outer(rows, cols) * d * d


def level0_areas(labels: np.ndarray, in_tissue: np.ndarray, out_downsample: float, width: int, height: int,
                 n_classes: int, not_called: int) -> tuple[list[float], float, float]:
    """Level-0 pixel areas (each output cell's part inside the slide, :func:`cell_areas`): per class, of the tissue
    mask, and of tissue or any pixel called a class other than ``not_called``; summed a band of rows at a time, so no
    full-size float map is made."""
    from histowsss.slides import inference

    H, W = labels.shape
    cls = np.zeros(256)
    tissue = analysed = 0.0
    step = max(1, inference.BAND_PIXELS // 2 // max(W, 1))
    for r in range(0, H, step):
        cell = cell_areas((min(H, r + step) - r, W), out_downsample, width, height - r * float(out_downsample))
        lab = labels[r : r + step]
        cls += np.bincount(lab.ravel(), weights=cell.ravel(), minlength=256)
        t = in_tissue[r : r + step]
        tissue += float(cell[t].sum())
        analysed += float(cell[t | (lab != not_called)].sum())
    return [float(v) for v in cls[:n_classes]], tissue, analysed


class NoTissueError(ValueError):
    """The slide's thumbnail shows no tissue: nothing to segment (predict skips it and goes on)."""


def slide_output_paths(out_dir: Path, stem: str) -> list[Path]:
    return [out_dir / f"{stem}{suf}" for suf in SLIDE_OUTPUT_SUFFIXES]


def _stain_fn(cfg, thumb: np.ndarray, tissue: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    method = cfg.data.stain_normalization
    if method == "none":
        return None
    from histowsss.data.stain import stain_normalizer, stain_source

    px = thumb[tissue] if tissue.any() else thumb.reshape(-1, 3)
    return stain_normalizer(method, cfg.data.stain_reference, source=stain_source(method, px.reshape(-1, 1, 3)))


def predict_slide_file(path: Path, cfg, model, device, out_dir: Path, options: SlideOptions | None = None, *,
                       min_tissue: float = 0.0, simplify: float = 1.0, min_area: float = 16.0, network: str = "seg",
                       weights: str = "", model_id: str = "", log: Callable[[str], None] = print) -> dict:
    """Segment one slide and write its outputs (see the module docstring); returns the summary record.

    ``weights`` names the network's weights (``segnet_io.weights_fingerprint``): tiles cached by a killed call with
    other weights are not reused. ``model_id`` (``segnet_io.weights_digest``) enters the regions' ids."""
    from PIL import Image

    from histowsss.engine.atomic import write_bytes, write_json, write_npz, write_png
    from histowsss.export.geojson import feature_collection, feature_id_prefix, hex_to_rgb, labels_to_features
    from histowsss.export.overlay import overlay
    from histowsss.slides.grid import tissue_tiles, working_downsample
    from histowsss.slides.inference import UNLABELLED, predict_slide
    from histowsss.slides.reader import open_slide
    from histowsss.slides.tissue import tissue_mask
    from histowsss.steps.eval_seg import clean_for, finite_probs, predict_probs

    o = options or SlideOptions()
    downsample, slide_mpp, train_mpp, backend = o.downsample, o.slide_mpp, o.train_mpp, o.backend
    tile_size, margin, out_factor, tissue_threshold = o.tile_size, o.margin, o.out_factor, o.tissue_threshold
    classes = cfg.data.classes
    names = list(classes.names)
    colors_hex = [classes.color(n) for n in names]
    bg = classes.background_index  # None (e.g. tissue types): every class is exported, off-tissue area is unlabelled
    with open_slide(path, backend) as slide:
        mpp = slide_mpp if slide_mpp is not None else slide.mpp
        if slide_mpp is not None and slide.mpp and abs(slide_mpp / slide.mpp - 1) > 0.01 and downsample is None:
            log(f"warning: {path.name}: --slide-mpp {slide_mpp:g} replaces the {slide.mpp:.3f} um/px its metadata "
                "gives (every slide of the call is read at --slide-mpp: predict slides with a right resolution apart)")
        ds = working_downsample(path, mpp, train_mpp if train_mpp is not None else cfg.data.mpp,
                                cfg.data.image_scale, downsample)
        thumb, thumb_ds = slide.thumbnail(2048)
        tissue = tissue_mask(thumb, threshold=tissue_threshold)
        tiles = tissue_tiles(slide.dimensions, ds, tile_size, tissue, thumb_ds, min_tissue)
        log(f"{path.name}: {slide.backend}, level 0 {slide.dimensions[0]}x{slide.dimensions[1]} px"
            f"{f' at {mpp:.3f} um/px' if mpp else ''}, network reads it at downsample {ds:.3f}: "
            f"{len(tiles)} tissue tile(s) of {tile_size} px")
        if not tiles:
            gray = np.array_equal(thumb[..., 0], thumb[..., 1]) and np.array_equal(thumb[..., 0], thumb[..., 2])
            raise NoTissueError(f"{path}: no tissue found (tissue threshold "
                                f"{'Otsu' if tissue_threshold is None else tissue_threshold}); is the slide blank? "
                                + ("It has no colour at all (its three channels are equal): if it holds tissue, it "
                                   "is a grayscale scan, and H&E needs colour (scan or export it in RGB)" if gray else
                                   "Lower --tissue-threshold if it holds faint tissue"))
        stain = _stain_fn(cfg, thumb, tissue)
        backend_used = slide.backend
        frame = (0, 0, *slide.dimensions) if o.no_crop else slide.qupath_frame
        origin = frame[:2]
        if origin != (0, 0):
            log(f"{path.name}: QuPath crops this slide to its bounds; GeoJSON coordinates start at level-0 pixel "
                f"{origin} as QuPath's do (--no-crop for the uncropped frame)")

        def predict_fn(rgb: np.ndarray) -> np.ndarray:
            return finite_probs(predict_probs(model, stain(rgb) if stain else rgb, cfg, device), path)

        st = Path(path).stat()  # a slide scanned again under the same name and size is another slide
        params = {"slide": str(Path(path).resolve()), "file": [st.st_size, st.st_mtime_ns],
                  "size": list(slide.dimensions), "downsample": ds,
                  "tile_size": tile_size, "margin": margin, "out_factor": out_factor, "network": network,
                  "weights": weights,
                  "run_config": cfg.step_hash("data", "train_seg", "eval_seg"), "stain": cfg.data.stain_normalization}
        if stain is not None:  # the stain source statistics come from the tissue of this reader's thumbnail
            params.update(backend=slide.backend, tissue_threshold=tissue_threshold)
        cache = out_dir / f"{image_stem(path)}.partial"
        pred = predict_slide(slide, tiles, predict_fn, len(names), ds, margin=margin, out_factor=out_factor,
                             fill_class=bg, cache_dir=cache, params=params, log=log)
        labels = clean_for(pred.labels(), cfg, pixel_factor=out_factor)
        H0, W0 = slide.dimensions[1], slide.dimensions[0]
        # overlay at the label map's resolution, at most 4096 px
        f = max(labels.shape) / 4096
        ow, oh = (labels.shape[1], labels.shape[0]) if f <= 1 else (max(1, round(labels.shape[1] / f)),
                                                                       max(1, round(labels.shape[0] / f)))
        view = slide.read_banded(0, 0, labels.shape[1] * pred.out_downsample, labels.shape[0] * pred.out_downsample,
                                 (ow, oh))
        lab_view = np.asarray(Image.fromarray(labels).resize((ow, oh), Image.NEAREST))
    labels_p, prob_p, overlay_p, tissue_p, geo_p, summary_p = slide_output_paths(out_dir, image_stem(path))
    write_png(labels_p, labels)
    write_npz(prob_p, probs=pred.probs_float16(), classes=np.array(names),
              out_downsample=np.array(pred.out_downsample), level0_size=np.array((H0, W0)), model=np.array(model_id))
    write_png(overlay_p, overlay(view, lab_view, [hex_to_rgb(c) for c in colors_hex], bg))
    write_png(tissue_p, (tissue * 255).astype(np.uint8))
    feats = labels_to_features(labels, names, colors_hex, background=bg, scale=1.0 / pred.out_downsample,
                               simplify=simplify, min_area=min_area, id_prefix=feature_id_prefix(model_id, path),
                               probs=pred.probs,
                               bounds=frame[2:], origin=origin)
    write_bytes(geo_p, json.dumps(feature_collection(feats)).encode())
    in_tissue = np.asarray(Image.fromarray(tissue.astype(np.uint8)).resize(labels.shape[::-1], Image.NEAREST)) > 0
    # the thumbnail's tissue mask misses white lumen and tissue edges that the network calls a class: count them too,
    # so class areas here, in predictions.csv and in the GeoJSON agree
    class_px, tissue_px, analysed = level0_areas(labels, in_tissue, pred.out_downsample, W0, H0, len(names),
                                                 bg if bg is not None else UNLABELLED)
    areas = {n: class_px[i] for i, n in enumerate(names)}
    record = {
        "input": str(path), "kind": "slide", "backend": backend_used, "level0_size": [W0, H0],
        "geojson_origin_level0": list(origin),
        "mpp": mpp, "downsample": ds, "out_downsample": pred.out_downsample, "tile_size": tile_size,
        "margin": margin, "tiles": pred.tiles_total, "tiles_reused": pred.tiles_reused,
        "seconds": round(pred.seconds, 2), "timings": pred.timings, "network": network,
        "area_level0_px": areas, "tissue_level0_px": tissue_px,
        "tissue_or_class_level0_px": analysed,
        "area_mm2": {n: a * (mpp * 1e-3) ** 2 for n, a in areas.items()} if mpp else None,
        "regions": {n: sum(1 for x in feats if x["properties"]["classification"]["name"] == n)
                    for i, n in enumerate(names) if i != bg},
        "labels": str(labels_p), "probs": str(prob_p), "overlay": str(overlay_p), "tissue": str(tissue_p),
        "geojson": str(geo_p),
    }
    if cfg.eval_seg.image_gate:
        record["note"] = "eval_seg.image_gate is not applied to slides"
    write_json(summary_p, record)
    shutil.rmtree(cache, ignore_errors=True)
    log(f"{path.name}: {pred.tiles_total} tiles ({pred.tiles_reused} reused) in {pred.seconds:.1f} s, "
        + (", ".join(f"{v} {k}" for k, v in record["regions"].items()) + " region(s)" if record["regions"]
           else "no regions") + f" -> {geo_p}")
    return record
