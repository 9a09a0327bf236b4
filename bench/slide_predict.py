"""Benchmark: whole-slide prediction reproduces image-level quality, and what it costs.

Usage::

    python bench/slide_predict.py --run bench/work/cam_glas-gland.cpu --profile cpu [--images 8]
        [--tile-sizes 1024 512 256 --name slide_predict_tiles]

Needs a finished glas-gland run (``bench/cam_glas.py`` + ``bench/seg_glas.py``, see bench/README.md). Builds two
pyramidal, JPEG-compressed (quality 90) tiled TIFF "slides" from the first ``--images`` GlaS testA images of
the common size (775 x 522),
upsampled 2x (level 0 at 0.31 um/px, as a 40x scan; 4 levels) under ``bench/work/slides/``:

* ``mosaic``: the images side by side, 4 per row, touching (tissue next to tissue);
* ``glass``: the same with 100 px of blank glass (working resolution) between and around them, as tissue
  fragments on a real slide.

Each is segmented by the product path (``histowsss.slides.predict.predict_slide_file``: tissue mask, 1024 px
tiles + 64 px margins at the run's resolution, 0.62 um/px, stitched at working resolution) and compared with
segmenting every image on its own (eval_seg's own inference and object clean-up, ``predict_probs`` +
``labels_from_probs``, as the slide's labels are cleaned): gland IoU / mIoU over the
images' pixels, pixel agreement, and (glass) the IoU within 64 px of an image edge vs further in. Also each image
on its own framed by 100 px of glass (``per_image_on_glass``: no slide, JPEG or resampling), which separates what
the glass next to an image's cut edges does to the network from what the slide path does. Test images
are only scored here; nothing is chosen from them. Writes ``bench/results/slide_predict.<profile>.json``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import write_result  # noqa: E402

GLASS = (242, 241, 244)


def build_slide(path: Path, images: list[np.ndarray], gap: int, per_row: int = 4, up: int = 2,
                mpp0: float = 0.31) -> list[tuple[int, int]]:
    """Write the mosaic slide; returns each image's top-left corner in working (un-upsampled) pixels."""
    import tifffile
    from PIL import Image

    h, w = images[0].shape[:2]
    rows = (len(images) + per_row - 1) // per_row
    H, W = rows * h + (rows + 1) * gap, per_row * w + (per_row + 1) * gap
    canvas = np.empty((H, W, 3), np.uint8)
    canvas[:] = GLASS
    rng = np.random.default_rng(0)
    canvas = np.clip(canvas.astype(np.int16) + rng.integers(-3, 4, canvas.shape), 0, 255).astype(np.uint8)
    corners = []
    for i, im in enumerate(images):
        r, c = divmod(i, per_row)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        canvas[y : y + im.shape[0], x : x + im.shape[1]] = im
        corners.append((y, x))
    lv = np.asarray(Image.fromarray(canvas).resize((W * up, H * up), Image.BICUBIC))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tif:
        for k in range(4):
            tif.write(lv, tile=(256, 256), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                      resolution=(1e4 / (mpp0 * 2**k),) * 2, resolutionunit="CENTIMETER",
                      **({"subfiletype": 1} if k else {}))
            lv = np.asarray(Image.fromarray(lv).resize((lv.shape[1] // 2, lv.shape[0] // 2), Image.LANCZOS))
    return corners


def scores(pred: list[np.ndarray], gt: list[np.ndarray]) -> dict:
    inter = sum(int(((p == 1) & (g == 1)).sum()) for p, g in zip(pred, gt))
    union = sum(int(((p == 1) | (g == 1)).sum()) for p, g in zip(pred, gt))
    inter0 = sum(int(((p == 0) & (g == 0)).sum()) for p, g in zip(pred, gt))
    union0 = sum(int(((p == 0) | (g == 0)).sum()) for p, g in zip(pred, gt))
    g_iou, b_iou = 100 * inter / max(union, 1), 100 * inter0 / max(union0, 1)
    return {"gland_iou": round(g_iou, 2), "background_iou": round(b_iou, 2), "miou": round((g_iou + b_iou) / 2, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "bench/work/cam_glas-gland.cpu")
    ap.add_argument("--profile", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--device", default=None)
    ap.add_argument("--tile-sizes", type=int, nargs="+", default=[1024],
                    help="slide tile sizes (working px) to segment the mosaic with; the first is the reference the "
                         "others are compared with (does the result depend on where the tiles fall?)")
    ap.add_argument("--name", default="slide_predict", help="result name (bench/results/<name>.<profile>.json)")
    args = ap.parse_args()

    import torch

    from histowsss.cli.predict_cmd import load_run_config
    from histowsss.data.loading import load_image
    from histowsss.data.manifest import read_manifest
    from histowsss.data.masks import load_class_mask
    from histowsss.engine.device import resolve_device
    from histowsss.slides.predict import SlideOptions, predict_slide_file
    from histowsss.steps.eval_seg import labels_from_probs, predict_probs
    from histowsss.steps.segnet_io import load_segnet

    t_all = time.perf_counter()
    cfg = load_run_config(args.run)
    if cfg.data.image_scale != 1.0:
        raise SystemExit("this benchmark expects a run at image_scale 1 (glas-gland)")
    dev = resolve_device(args.device or cfg.device)
    if dev.type == "cpu":
        torch.set_num_threads(2)
    model = load_segnet(cfg, args.run, "seg", dev)
    samples, images = [], []
    for s in read_manifest(cfg.data, ["testA"]):  # the first --images testA images of the common 775 x 522 size
        im = load_image(s.image, cfg.data)
        if im.shape[:2] == (522, 775):
            samples.append(s)
            images.append(im)
        if len(samples) == args.images:
            break
    gts = [load_class_mask(s, cfg.data) for s in samples]

    t0 = time.perf_counter()
    probs = [predict_probs(model, im, cfg, dev) for im in images]
    t_images = time.perf_counter() - t0  # the network alone, as the slides' network_s
    # as eval_seg / predict: with the object clean-up, which the slide's labels get too
    own = [labels_from_probs(p, cfg) for p in probs]
    metrics: dict = {"images": [s.name for s in samples],
                     "per_image": {**scores(own, gts), "seconds": round(t_images, 1),
                                   "network_mpx_per_s": round(sum(im.shape[0] * im.shape[1] for im in images) / 1e6
                                                              / t_images, 3)}}
    h, w = images[0].shape[:2]
    # the same network on each image framed by glass (no slide, no JPEG, no resampling): what the glass context alone
    # does to the image's edges, apart from the slide path
    band = np.zeros((h, w), bool)
    band[:64] = band[-64:] = True
    band[:, :64] = band[:, -64:] = True
    rng = np.random.default_rng(0)
    framed = []
    for im in images:
        canvas = np.empty((h + 200, w + 200, 3), np.uint8)
        canvas[:] = GLASS
        canvas = np.clip(canvas.astype(np.int16) + rng.integers(-3, 4, canvas.shape), 0, 255).astype(np.uint8)
        canvas[100 : 100 + h, 100 : 100 + w] = im
        framed.append(labels_from_probs(predict_probs(model, canvas, cfg, dev), cfg)[100 : 100 + h, 100 : 100 + w])
    agree = float(np.mean([np.mean(a == o) for a, o in zip(framed, own)]))
    metrics["per_image_on_glass"] = {
        **scores(framed, gts), "agreement_with_per_image": round(100 * agree, 2),
        **{name: scores([c[sel] for c in framed], [g[sel] for g in gts])
           for name, sel in (("edge_64px", band), ("interior", ~band))}}
    print("per_image_on_glass", metrics["per_image_on_glass"])
    work = ROOT / "bench/work/slides"
    for variant, gap in (("mosaic", 0), ("glass", 100)):
        path = work / f"glas_{variant}.tif"
        corners = build_slide(path, images, gap)
        out = work / f"pred_{variant}"
        for f in out.glob(f"{path.stem}*"):  # outputs and the tile cache of an earlier, interrupted run
            if f.is_file():
                f.unlink()
            elif f.is_dir():
                shutil.rmtree(f)
        t0 = time.perf_counter()
        rec = predict_slide_file(path, cfg, model, dev, out, SlideOptions(train_mpp=0.62, out_factor=1,
                                                                          tile_size=args.tile_sizes[0]), log=print)
        secs = time.perf_counter() - t0
        from PIL import Image

        lab = np.asarray(Image.open(rec["labels"]))
        if variant == "mosaic" and len(args.tile_sizes) > 1:  # the same slide cut into other tiles
            by_tile = {}
            for size in args.tile_sizes[1:]:
                other_out = work / f"pred_{variant}_tile{size}"
                shutil.rmtree(other_out, ignore_errors=True)
                t1 = time.perf_counter()
                other = predict_slide_file(path, cfg, model, dev, other_out,
                                           SlideOptions(train_mpp=0.62, out_factor=1, tile_size=size), log=print)
                other_lab = np.asarray(Image.open(other["labels"]))
                other_crops = [other_lab[y : y + h, x : x + w] for y, x in corners]
                by_tile[str(size)] = {
                    **scores(other_crops, gts), "tiles": other["tiles"], "seconds": round(time.perf_counter() - t1, 1),
                    "agreement_with_reference_tiles": round(100 * float(np.mean([np.mean(a == b) for a, b in zip(
                        other_crops, [lab[y : y + h, x : x + w] for y, x in corners])])), 2)}
                print(f"tile {size}", by_tile[str(size)])
            metrics["mosaic_by_tile_size"] = {"reference_tile_size": args.tile_sizes[0], **by_tile}
        crops = [lab[y : y + h, x : x + w] for y, x in corners]
        agree = float(np.mean([np.mean(c == o) for c, o in zip(crops, own)]))
        m = {**scores(crops, gts), "agreement_with_per_image": round(100 * agree, 2), "seconds": round(secs, 1),
             "tiles": rec["tiles"], "tiles_reused": rec["tiles_reused"], "level0_size": rec["level0_size"], "timings": rec["timings"],
             "network_mpx_per_s": round(rec["timings"]["network_mpx"] / max(rec["timings"]["network_s"], 1e-9), 3),
             "tissue_mpx_per_s": round(len(images) * h * w / 1e6 / secs, 3)}
        for name, sel in (("edge_64px", band), ("interior", ~band)):
            m[name] = {"slide": scores([c[sel] for c in crops], [g[sel] for g in gts]),
                       "per_image": scores([o[sel] for o in own], [g[sel] for g in gts])}
        metrics[variant] = m
        print(variant, m)
    metrics["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    wall = time.perf_counter() - t_all
    config = {"run": str(args.run), "images": args.images, "level0_mpp": 0.31, "working_mpp": 0.62,
              "tile_size": args.tile_sizes[0], "other_tile_sizes": args.tile_sizes[1:], "margin": 64, "out_factor": 1, "jpeg_quality": 90, "glass_gap_px": 100,
              "eval_seg": cfg.eval_seg.model_dump(mode="json"), "device": str(dev),
              "note": "testA images are only scored; no choice is made from them"}
    p = write_result(args.name, args.profile, wall, config, metrics, [])
    print(p)


if __name__ == "__main__":
    main()
