"""`histowsss predict --run RUN_DIR INPUT... --out DIR`: segment new images with a run's trained network
(``RUN_DIR`` may also be a model folder written by ``histowsss export``).

Per input image ``<stem>`` (files, or every image in a folder; ``--recursive``: in its sub-folders too), into
``DIR``:

* ``<stem>_labels.png``: class ids (uint8) at the input's own resolution (level 0);
* ``<stem>_prob.npz``: ``probs`` float16 (C, h, w) at the working resolution (data.image_scale), ``classes``,
  ``image_scale``, ``level0_size`` (H, W) and ``model`` (``<network>:<weights digest>``: which network made it);
* ``<stem>_overlay.png``: the image with non-background classes tinted and outlined in their colours;
* ``<stem>.geojson``: a QuPath-importable FeatureCollection, one annotation per connected region per
  non-background class, in level-0 pixel coordinates;
* ``predictions.csv`` (one per folder, one row per ``<stem>``, merged across invocations: a stem predicted again
  replaces its row): per input the percent of the image (of the tissue, for slides), region count and mm^2 of every
  non-background class (:mod:`histowsss.export.summary`).

Whole-slide images (openslide formats such as .svs/.ndpi/.mrxs, and tiled or pyramidal .tif/.tiff) are segmented
tile by tile over their tissue at the training resolution, resumably; their outputs are described in
:mod:`histowsss.slides.predict`.

Existing outputs are never replaced without ``--overwrite`` (checked for every input before any work); every
file is written atomically. An input the image or slide reader refuses (not an image, damaged, grayscale, a slide
that cannot be opened or read) is skipped with its reason and the batch goes on; the command then lists the skipped
inputs and exits with code 1. Other errors (the run folder or model, memory, Ctrl-C) stop the batch at once.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import typer

from histowsss.cli.common import clear_errors, log_line, stop_on_interrupt
from histowsss.data.io import IMAGE_SUFFIXES, ImageReadError, image_stem
from histowsss.export.overlay import overlay
from histowsss.export.summary import SUMMARY_FILE, SummaryBuffer, summarised_outputs, summary_row
from histowsss.slides.predict import SlideOptions
from histowsss.slides.reader import INSTALL_HINT, SLIDE_SUFFIXES, SlideError, is_slide_file

INPUT_SUFFIXES = IMAGE_SUFFIXES + SLIDE_SUFFIXES
OUTPUT_SUFFIXES = ("_labels.png", "_prob.npz", "_overlay.png", ".geojson")
OUTPUT_IMAGE_SUFFIXES = ("_labels.png", "_overlay.png", "_tissue.png")  # images predict writes (slides: + tissue)
# errors of one input (the readers' own, naming the file): the input is skipped and the batch goes on
INPUT_ERRORS: tuple[type[Exception], ...] = (ImageReadError, SlideError)
SKIP_HINT = "pass --skip with a pattern of their names (e.g. --skip '*-labelled.png')"


def collect_inputs(inputs: list[Path], recursive: bool = False, exclude: Path | None = None,
                   skip_names: list[str] | None = None) -> list[Path]:
    """Image files named, or found in named folders (``recursive``: in their sub-folders too); clear errors for the
    rest. Found in folders, earlier outputs (label, overlay and tissue PNGs below ``exclude``, the output folder)
    hidden files (a killed atomic write's ``.<name>.partial.png``, macOS ``._<name>``), files in hidden or
    ``*.partial`` folders (slide tile caches) and files whose name matches a ``skip_names`` pattern (``--skip``,
    e.g. ``*-labelled.png``: the label tiles QuPath exports beside the images) are skipped."""
    from fnmatch import fnmatch

    skip = exclude.resolve() if exclude is not None else None
    broken: list[Path] = []  # links (with an image's name) whose file is gone

    def wanted(f: Path, top: Path) -> bool:
        parts = f.relative_to(top).parts
        if parts[-1].startswith(".") or any(x.startswith(".") or x.endswith(".partial") for x in parts[:-1]):
            return False
        if any(fnmatch(f.name, pat) for pat in skip_names or ()):
            return False
        if (skip is not None and f.name.endswith(OUTPUT_IMAGE_SUFFIXES)
                and (skip == f.resolve().parent or skip in f.resolve().parents)):
            return False
        if f.is_symlink() and not f.exists() and f.suffix.lower() in INPUT_SUFFIXES:
            broken.append(f)
        return f.is_file() and f.suffix.lower() in INPUT_SUFFIXES

    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found = sorted(f for f in (p.rglob("*") if recursive else p.iterdir()) if wanted(f, p))
            if not found:
                raise FileNotFoundError(f"{p}: folder holds no images or slides ({', '.join(INPUT_SUFFIXES)})"
                                        + ("" if recursive else "; pass --recursive to search its sub-folders"))
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if broken:  # (a data folder of links whose targets moved: said, not passed over)
        import warnings

        warnings.warn(f"{len(broken)} link(s) in the input folder(s) point to no file, e.g. {broken[0]} -> "
                      f"{os.readlink(broken[0])}: left out", UserWarning, stacklevel=2)
    stems: dict[str, Path] = {}
    for f in out:
        stem = image_stem(f)
        if stem in stems and stems[stem] != f:
            raise ValueError(f"two inputs share the name {stem!r} ({stems[stem]} and {f}); their outputs would "
                             "collide: predict them into different --out folders")
        stems[stem] = f
    return list(dict.fromkeys(out))


def output_paths(out_dir: Path, stem: str) -> list[Path]:
    return [out_dir / f"{stem}{suf}" for suf in OUTPUT_SUFFIXES]


def check_out_folder(out_dir: Path) -> None:
    """A clear error, before any work, when ``out_dir`` or a folder above it exists and is not a folder (a file)."""
    for p in (out_dir, *out_dir.parents):
        if p.is_dir():
            return
        if p.exists() or p.is_symlink():
            above = "" if p == out_dir else f" (on the way to --out {out_dir})"
            raise NotADirectoryError(f"{p}: exists and is a file, not a folder{above}; --out must be a folder (it is "
                                     "made if missing): pick another name for it, or move that file away")


def input_error(e: BaseException, f: Path) -> bool:
    """Whether ``e`` is a problem of the input ``f`` alone: the image or slide reader's error naming ``f`` (not a
    missing slide reader, which every slide would meet)."""
    return isinstance(e, INPUT_ERRORS) and str(e).startswith(str(f)) and INSTALL_HINT not in str(e)


def skipped_report(skipped: list[tuple[Path, str]], done: int = 1) -> str:
    """The lines that end a batch with skipped inputs: each with its reason, and how to go on (``done``: how many
    inputs were predicted)."""
    lines = [f"{len(skipped)} input(s) skipped, no outputs written for them:"]
    lines += [f"  {reason}" for _, reason in skipped]
    lines.append(("the outputs of the other inputs are complete" if done else "no input was predicted") + "; fix or "
                 "replace the skipped files and run the same "
                 "command with --skip-existing (instead of --overwrite) to predict only them, or, for files of a "
                 f"folder that are not inputs (e.g. label tiles), {SKIP_HINT}")
    return "\n".join(lines)


def load_run_config(run_dir: Path):
    from histowsss.config import load_config

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: not found; --run must be a run folder made by `histowsss run`"
                                + (f" ({run_dir} is a file, a config?: give the folder its run wrote, runs/<name> "
                                   "unless --run said another)" if run_dir.is_file() else ""))
    return load_config(cfg_path)


def apply_cpu_amp(cfg, cpu_amp: bool | None, dev, log=print) -> None:
    """``--cpu-amp/--no-cpu-amp``: bfloat16 CPU inference on or off for both networks predict runs (in memory; the
    run's config.yaml is untouched). None keeps the run's settings. Off the CPU the options do nothing, so they are
    left as they are: a slide resumed on a GPU keeps its cached tiles (the settings are in the cache key)."""
    if cpu_amp is None:
        return
    if dev.type == "cpu":
        cfg.eval_seg.cpu_amp = cfg.make_cam.cpu_amp = cpu_amp
    else:
        log(f"--{'' if cpu_amp else 'no-'}cpu-amp applies to CPU inference only; ignored on {dev.type}")


def predict_images(run_dir: Path, inputs: list[Path], out_dir: Path, overwrite: bool = False,
                   network: str = "seg", device: str | None = None, simplify: float = 1.0,
                   min_area: float = 16.0, slide_options: SlideOptions | None = None, recursive: bool = False,
                   cpu_amp: bool | None = None, skip_existing: bool = False, skip_names: list[str] | None = None,
                   qupath_tiles: bool = False, skipped: list[tuple[Path, str]] | None = None,
                   log=print, colors: dict[str, str] | None = None) -> list[dict]:
    """Segment ``inputs`` with the run's network; returns one record per image or slide predicted (paths, regions
    per class). ``predictions.csv`` is updated as the batch goes (every 10 s and at the end, also when it fails), and
    ``skip_existing`` restores the rows a kill lost from the finished inputs' outputs.

    An input the image or slide reader refuses (:func:`input_error`): with a ``skipped`` list, it is logged, appended
    there as (path, reason) and the batch goes on (earlier outputs of its name are left as they are); without one,
    its error stops the batch. Any other error stops the batch at once.

    Whole-slide images (openslide formats, tiled TIFFs) go through :func:`histowsss.slides.predict.predict_slide_file`;
    a slide without tissue is skipped with a warning. ``skip_existing`` resumes a killed batch: inputs whose outputs
    all exist are skipped, those with only some are predicted again (without it, any existing output is an error
    unless ``overwrite``).
    """
    check_out_folder(out_dir)
    from histowsss.engine.ranks import env_world
    from histowsss.engine.run_dir import run_lock

    if env_world()[1] > 1:  # every process would segment every input into the same files
        raise RuntimeError(f"predict runs in one process, not under torchrun (WORLD_SIZE={env_world()[1]}): every "
                           "process would segment every input into the same --out; run `histowsss predict` without "
                           "torchrun (on a GPU machine it uses the first GPU; --device cuda:N picks another)")

    # a second predict into the same --out would pass the checks below before either wrote, then overwrite the
    # other's outputs and lose rows of predictions.csv: one predict per output folder at a time
    # (an --out not there yet is locked when it is made, and its outputs checked again then: a refused predict
    # leaves no folder behind)
    with contextlib.ExitStack() as locks:
        if out_dir.is_dir():
            locks.enter_context(run_lock(out_dir, "histowsss predict", place="output folder"))
        return _predict_into(run_dir, inputs, out_dir, overwrite, network, device, simplify, min_area, slide_options,
                             recursive, cpu_amp, skip_existing, skip_names, qupath_tiles, skipped, log, locks,
                             locked=out_dir.is_dir(), colors=colors)


def _predict_into(run_dir: Path, inputs: list[Path], out_dir: Path, overwrite: bool, network: str,
                  device: str | None, simplify: float, min_area: float, slide_options: SlideOptions | None,
                  recursive: bool, cpu_amp: bool | None, skip_existing: bool, skip_names: list[str] | None,
                  qupath_tiles: bool, skipped: list[tuple[Path, str]] | None, log,
                  locks: contextlib.ExitStack, locked: bool, colors: dict[str, str] | None = None) -> list[dict]:
    """:func:`predict_images` with ``out_dir`` locked (``locked``), or locked by ``locks`` when it is made."""
    from histowsss.engine.device import resolve_device
    from histowsss.export.model_bundle import bundle_networks
    from histowsss.slides.predict import slide_output_paths
    from histowsss.steps.segnet_io import check_network_input, load_segnet, network_described

    held = bundle_networks(run_dir)
    if held is not None:  # an exported model is checked against its card: copied in part, or damaged
        from histowsss.export.model_bundle import bundle_file_state

        missing, weights, other = bundle_file_state(run_dir)
        if missing:  # its own words, not a run folder's "train it first"
            what = ("its network's weights" if any(m.endswith(".safetensors") for m in missing) else "files")
            raise FileNotFoundError(f"{run_dir}: this exported model folder lacks {what} ({', '.join(missing)}; "
                                    "copied in part?); copy the whole folder again, or export it anew from its run "
                                    "folder (`histowsss export RUN_DIR --out DIR`)")
        if weights:  # damaged weights predict garbage (NaN)
            raise ValueError(f"{run_dir}: {', '.join(weights)} differ(s) from what `histowsss export` wrote (sha256 in "
                             "model.json): a damaged or partial copy; copy the exported folder again, or export it "
                             "anew from its run folder")
        if other:
            log(f"warning: {run_dir}: {', '.join(other)} changed since the export (sha256 in model.json): predicting "
                "with the changed file(s)")
    cfg = load_run_config(run_dir)
    # --colors: only the drawing (overlays, GeoJSON) takes them; the checks of the run's files read config.yaml's
    draw_cfg = cfg if not colors else cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"classes": with_colours(cfg.data.classes, colors)})})
    if held is not None and network not in held:
        raise FileNotFoundError(f"{run_dir}: this exported model holds {', '.join(held)}, not {network}; export it "
                                f"from its run folder with `histowsss export RUN_DIR --out DIR"
                                f"{' --supervised' if network == 'seg_supervised' else ''}`")
    files = collect_inputs(inputs, recursive=recursive, exclude=out_dir, skip_names=skip_names)
    if qupath_tiles:  # every name is checked before any work
        from histowsss.export.geojson import qupath_tile_placement

        placements = {f: qupath_tile_placement(f) for f in files}
        _check_tile_extents(placements, log)
    else:
        placements = {}
    slides = {f for f in files if is_slide_file(f)}
    o = slide_options
    if qupath_tiles and o is not None and o.slide_mpp is not None and cfg.data.mpp:  # (the tiles' own resolution)
        off = sorted({d for d, _, _ in placements.values() if abs(d * o.slide_mpp / cfg.data.mpp - 1) > 0.1})
        if off:
            log(f"warning: tiles exported at downsample {', '.join(f'{d:g}' for d in off)} of a {o.slide_mpp:g} "
                f"um/px slide are {off[0] * o.slide_mpp:.3g} um/px, and the network reads them as its training "
                f"images ({cfg.data.mpp:g} um/px): export the tiles at downsample "
                f"{cfg.data.mpp / o.slide_mpp:.3g} in QuPath")
    # (with --qupath-tiles, --slide-mpp is the tiles' slide's too: their areas)
    slide_only = None if o is None else (o.downsample, o.train_mpp) + (() if qupath_tiles else (o.slide_mpp,))
    if slide_only is not None and any(v is not None for v in slide_only) and len(slides) < len(files):
        images = [f.name for f in files if f not in slides]
        log(f"warning: --downsample / --slide-mpp / --train-mpp apply to whole-slide inputs only; {len(images)} "
            f"input(s) are read as images, whole and at their own resolution (as the training images were), e.g. "
            f"{', '.join(images[:3])} (a TIFF is a slide when it has a pyramid or is tiled and larger than "
            "8192 px; resample a region to the training resolution before predicting it)")

    def outputs_of(f: Path) -> list[Path]:
        return slide_output_paths(out_dir, image_stem(f)) if f in slides else output_paths(out_dir, image_stem(f))

    from histowsss.steps.segnet_io import weights_digest

    model_id = f"{network}:{weights_digest(run_dir, network)}"  # in every region's id, and in each _prob.npz
    if skip_existing and not overwrite:  # each input's last output is written last: all there = finished
        done = [f for f in files if all(p.exists() for p in outputs_of(f))]
        if unrecorded := _refuse_other_models(done, outputs_of, model_id):
            log(f"note: {unrecorded} finished input(s) record no network (predicted by a histowsss before outputs "
                "recorded it): kept as they are, unchecked; --overwrite predicts them again with this network")
        if done:
            log(f"{len(done)} of {len(files)} input(s) already predicted in {out_dir}: skipped (--skip-existing)")
            listed = summarised_outputs(out_dir)  # a kill can come between an input's outputs and its row
            with SummaryBuffer(out_dir) as rows:
                for f in done:
                    if _geojson_name(f) not in listed:
                        rows.add(_summary_row(_record_from_outputs(f, f in slides, out_dir, cfg, placements.get(f),
                                                                   _tile_mpp(cfg, o, placements.get(f))),
                                              cfg.data.mpp))
        finished = set(done)
        files = [f for f in files if f not in finished]
    elif not overwrite:
        _refuse_existing(files, outputs_of)
    if slides.intersection(files):  # not an error of one slide: said before any work
        _check_slide_reader((slide_options or SlideOptions()).backend, slides.intersection(files))
        _check_slide_resolutions(sorted(slides.intersection(files)), cfg, slide_options or SlideOptions())
    dev = resolve_device(device or cfg.device)
    apply_cpu_amp(cfg, cpu_amp, dev, log)
    check_network_input(cfg, run_dir, network)
    if (why := network_described(cfg, run_dir, network)) is not None:
        log(f"note: network {network} does not follow from {run_dir / 'config.yaml'} ({why}); it predicts with "
            "config.yaml's inference settings (eval_seg.*)")
    model = load_segnet(cfg, run_dir, network, dev)
    gate = None
    if cfg.eval_seg.image_gate:  # the run's CAM classifier decides which classes an image may contain
        from histowsss.steps.image_gate import ClassifierGate

        gate = ClassifierGate(cfg, run_dir, dev)
    if not locked:
        from histowsss.engine.run_dir import run_lock

        out_dir.mkdir(parents=True, exist_ok=True)
        locks.enter_context(run_lock(out_dir, "histowsss predict", place="output folder"))
        if not overwrite and not skip_existing:  # (another predict may have made the folder since the check)
            _refuse_existing(files, outputs_of)
    records: list[dict] = []
    blank: list[Path] = []
    with SummaryBuffer(out_dir) as rows:  # predictions.csv keeps the finished inputs' rows if the batch is killed
        for f in files:
            try:
                rec = _predict_one(f, f in slides, draw_cfg, model, dev, out_dir, gate, slide_options, simplify,
                                   min_area, network, run_dir, log, placements.get(f), model_id)
            except INPUT_ERRORS as e:  # e.g. a file that is no image, a label tile exported beside the images
                if not input_error(e, f):
                    raise
                if skipped is None:
                    if isinstance(e, ImageReadError):
                        raise ImageReadError(f"{e}; to leave such files of a folder out, {SKIP_HINT}") from None
                    raise
                kept = [p.name for p in outputs_of(f) if p.exists()]  # of an earlier input of its name (--overwrite)
                reason = str(e) + (f" (the earlier outputs of its name are kept: {', '.join(kept)})" if kept else "")
                skipped.append((f, reason))
                log(f"error: {reason}; skipped, the batch goes on")
                continue
            if rec is None:
                blank.append(f)
                if overwrite:  # outputs of an earlier prediction of this slide would outlive it: removed
                    for p in outputs_of(f):
                        p.unlink(missing_ok=True)
                    rows.drop(_geojson_name(f))
                continue
            records.append(rec)
            rows.add(_summary_row(rec, cfg.data.mpp))
    if blank:
        log(f"warning: {len(blank)} slide(s) without tissue, no outputs: {', '.join(f.name for f in blank)}")
    if records:
        no_mpp = not cfg.data.mpp and any(r.get("kind") != "slide" and not r.get("mpp") for r in records)
        log(f"per-input class fractions and areas: {out_dir / SUMMARY_FILE}" + (
            " (areas in mm² of images need the run's data.mpp, which it lacks: left empty)" if no_mpp else ""))
    return records


def _geojson_name(f: Path) -> str:
    """The name of an input's GeoJSON output (an image's or a slide's): its row's key in predictions.csv."""
    return f"{image_stem(f)}.geojson"


def _check_slide_reader(backend: str, slides: set[Path]) -> None:
    """A SlideError (no slide is opened) when none of the slide readers ``backend`` names can be imported."""
    import importlib

    if backend not in ("auto", "openslide", "tiffslide"):
        raise ValueError(f"--slide-backend {backend!r}: choose auto, openslide or tiffslide")
    for name in ("openslide", "tiffslide") if backend == "auto" else (backend,):
        try:
            importlib.import_module(name)
            return
        except Exception:  # ImportError; OSError where openslide's library is missing
            pass
    first = sorted(slides)[0]
    raise SlideError(f"{first}{f' (and {len(slides) - 1} more)' if len(slides) > 1 else ''}: whole-slide input(s), "
                     f"and no slide reader is available; {INSTALL_HINT}")


def _colour_option(text: str | None) -> dict[str, str] | None:
    """``--colors 'tumour=#ff0000,stroma=#00ff00'`` -> {class: colour}; a class named twice is refused."""
    if not text:
        return None
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, colour = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--colors: {part!r}: give CLASS=#rrggbb (e.g. tumour=#ff0000), comma-separated")
        if name.strip() in out:
            raise ValueError(f"--colors names {name.strip()} more than once: one colour per class")
        out[name.strip()] = colour.strip()
    return out


def with_colours(classes, colors: dict[str, str]):
    """The run's class map with ``colors`` (class -> '#rrggbb', ``--colors``) over its own display colours: how
    overlays and QuPath show the classes, which no step's output depends on (set in config.yaml instead, they would
    make every step again). A ValueError names an unknown class or a bad colour."""
    from histowsss.config.data import HEX_COLOUR, ClassMap

    unknown = [k for k in colors if k not in classes.names]
    if unknown:
        raise ValueError(f"--colors: {', '.join(map(repr, unknown))} is not one of the classes "
                         f"({', '.join(classes.names)})")
    bad = [f"{k}={v}" for k, v in colors.items() if not HEX_COLOUR.fullmatch(v)]
    if bad:
        raise ValueError(f"--colors: give each class a '#rrggbb' colour (hex, e.g. '#e6194b'), not {', '.join(bad)}")
    return ClassMap(names=classes.names, background=classes.background, colors={**classes.colors, **colors})


def _refuse_other_models(done: list[Path], outputs_of: Callable[[Path], list[Path]], model_id: str) -> int:
    """--skip-existing keeps finished outputs as this network's: a FileExistsError when some were made by another
    network (the ``model`` its ``_prob.npz`` records). Returns how many record no network (written by a histowsss
    before it was recorded): kept unchecked."""
    other: list[tuple[Path, str]] = []
    unrecorded = 0
    for f in done:
        prob = next((p for p in outputs_of(f) if p.name.endswith("_prob.npz")), None)
        try:
            with np.load(prob) as z:
                made_by = str(z["model"]) if "model" in z.files else None
        except Exception:  # noqa: BLE001 (unreadable: predicted again is no choice here; said as another network)
            made_by = "unreadable"
        if made_by is None:
            unrecorded += 1
        elif made_by != model_id:
            other.append((f, made_by))
    if other:
        more = f" (and {len(other) - 1} more)" if len(other) > 1 else ""
        raise FileExistsError(f"{len(other)} finished input(s) in this --out were predicted by another network: "
                              f"{other[0][0].name} by {other[0][1]}{more}, this is {model_id}; --skip-existing would "
                              "keep them as this network's. Predict into another --out, or pass --overwrite")
    return unrecorded


def _refuse_existing(files: list[Path], outputs_of: Callable[[Path], list[Path]]) -> None:
    existing = [p for f in files for p in outputs_of(f) if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]} already exists{more}; pass --skip-existing to go on with a killed "
                              "batch, --overwrite to replace the outputs, or choose another --out folder")


def _check_tile_extents(placements: dict[Path, tuple[float, float, float]], log) -> None:
    """Warn about QuPath tiles whose image size times the downsample d of their name is not the level-0 width and
    height the name gives (w, h; QuPath rounds, so by more than d + 1 px): d is wrong, or the file was resized after
    export, and its GeoJSON would be placed at the wrong scale."""
    from histowsss.data.io import image_size
    from histowsss.export.geojson import qupath_tile_extent

    off = []
    for f, (d, _, _) in placements.items():
        extent = qupath_tile_extent(f)
        if extent is None:
            continue
        try:
            h, w = image_size(f)
        except Exception:  # noqa: BLE001 (an unreadable file is its own turn's error)
            continue
        if abs(w * d - extent[0]) > d + 1 or abs(h * d - extent[1]) > d + 1:
            off.append(f"{f.name} ({w}x{h} px x d={d:g} = {w * d:g}x{h * d:g}, the name says {extent[0]:g}x"
                       f"{extent[1]:g})")
    if off:
        log(f"warning: {len(off)} QuPath tile(s) whose size times d is not the level-0 size their name gives: "
            f"{'; '.join(off[:3])}{' ...' if len(off) > 3 else ''}; their GeoJSON is placed with d as named: check "
            "the export's downsample, and do not resize tiles after export")


def _check_slide_resolutions(slides: list[Path], cfg, o: SlideOptions) -> None:
    """Before any slide is segmented: a ValueError naming every slide whose resolution is unknown (no
    microns-per-pixel in its metadata, and no --slide-mpp or --downsample), so that a long batch does not stop at the
    first such slide hours in. A slide that cannot be opened is left to its turn (skipped or refused there)."""
    if o.downsample is not None or o.slide_mpp is not None:
        return
    from histowsss.slides.grid import working_downsample
    from histowsss.slides.reader import open_slide

    opened, unknown = [], []
    for f in slides:
        try:
            with open_slide(f, o.backend) as slide:
                opened.append(f)
                if not slide.mpp:
                    unknown.append(f)
        except Exception:  # noqa: BLE001 (an unreadable slide is its own turn's error)
            continue
    if not opened:
        return
    train_mpp = o.train_mpp if o.train_mpp is not None else cfg.data.mpp
    working_downsample(opened[0], 1.0, train_mpp, cfg.data.image_scale)  # the run's own resolution: said first
    if unknown:
        more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise ValueError(f"{len(unknown)} of {len(slides)} slide(s) have no microns-per-pixel value in their metadata: "
                         f"{', '.join(str(f) for f in unknown[:3])}{more}; nothing was predicted. Predict them apart "
                         "from the slides that have one, with --slide-mpp (their level-0 resolution) or --downsample "
                         "(level-0 slide pixels per network pixel): either applies to every slide of a call")


def _predict_one(f: Path, is_slide: bool, cfg, model, dev, out_dir: Path, gate, slide_options, simplify: float,
                 min_area: float, network: str, run_dir: Path, log,
                 placement: tuple[float, float, float] | None = None, model_id: str = "") -> dict | None:
    """Segment one image or slide and write its outputs; its record, or None for a slide without tissue.
    ``placement`` (d, x, y): the image is a tile of a slide, and its GeoJSON is written in the slide's level-0
    pixels (:func:`~histowsss.export.geojson.place_features`). ``model_id`` enters the regions' ids."""
    from histowsss.data.io import read_rgb
    from histowsss.data.loading import load_image
    from histowsss.engine.atomic import write_bytes, write_npz, write_png
    from histowsss.export.geojson import feature_collection, feature_id_prefix, hex_to_rgb, labels_to_features
    from histowsss.slides.predict import NoTissueError, predict_slide_file
    from histowsss.steps.eval_seg import finite_probs, labels_from_probs, predict_probs
    from histowsss.steps.segnet_io import weights_fingerprint

    classes = cfg.data.classes
    colors_hex = [classes.color(n) for n in classes.names]
    colors = [hex_to_rgb(c) for c in colors_hex]
    bg = classes.background_index  # None (e.g. tissue types): every class is tinted and exported
    scale = cfg.data.image_scale
    if is_slide:
        try:
            return predict_slide_file(f, cfg, model, dev, out_dir, slide_options or SlideOptions(),
                                      simplify=simplify, min_area=min_area, network=network,
                                      weights=weights_fingerprint(run_dir, network), model_id=model_id, log=log)
        except NoTissueError as e:  # an empty glass slide in a batch: said, and the batch goes on
            log(f"warning: {e}; skipped")
            return None
    original = read_rgb(f)
    img = load_image(f, cfg.data)  # as the network saw its training images: scaled, stain-normalised
    probs = finite_probs(predict_probs(model, img, cfg, dev), f)
    if gate is not None:
        from histowsss.steps.image_gate import apply_gate

        probs = apply_gate(probs, gate.absent(img), classes.background_index)
    lab = labels_from_probs(probs, cfg)
    H, W = original.shape[:2]
    lab0 = lab
    if lab.shape != (H, W):
        from PIL import Image

        lab0 = np.asarray(Image.fromarray(lab).resize((W, H), Image.NEAREST))
    labels_p, prob_p, overlay_p, geo_p = output_paths(out_dir, image_stem(f))
    write_png(labels_p, lab0)
    write_npz(prob_p, probs=probs.astype(np.float16), classes=np.array(classes.names),
              image_scale=np.array(scale), level0_size=np.array((H, W)), model=np.array(model_id))
    write_png(overlay_p, overlay(original, lab0, colors, bg))
    # (the working size over the image's per axis: a rounded resize is no exact data.image_scale; cut to the image)
    d = placement[0] if placement is not None else 1.0  # (--simplify, --min-area: the slide's level-0 pixels)
    feats = labels_to_features(lab, classes.names, colors_hex, background=bg, scale=(lab.shape[0] / H,
                               lab.shape[1] / W), simplify=simplify / d, min_area=min_area / d ** 2, bounds=(W, H),
                               id_prefix=feature_id_prefix(model_id, f), probs=probs)
    if placement is not None:  # a QuPath tile: onto its slide
        from histowsss.export.geojson import place_features

        feats = place_features(feats, *placement)
    write_bytes(geo_p, json.dumps(feature_collection(feats)).encode())  # the last output: all there = finished
    counts = _region_counts(feats, classes.names, bg)
    log(f"{f.name}: {', '.join(f'{v} {k}' for k, v in counts.items()) + ' region(s)' if counts else 'no regions'} "
        f"-> {geo_p}")
    return _image_record(f, out_dir, lab0, counts, classes.names, placement, _tile_mpp(cfg, slide_options, placement))


def _tile_mpp(cfg, slide_options: SlideOptions | None, placement: tuple[float, float, float] | None
              ) -> float | None:
    """The level-0 microns per pixel of the slide a QuPath tile was cut from: --slide-mpp, else what the network
    takes the tile's pixels to be (data.mpp) over its downsample; None for an image, or with no data.mpp."""
    if placement is None:
        return None
    given = slide_options.slide_mpp if slide_options is not None else None
    return given if given is not None else (cfg.data.mpp / placement[0] if cfg.data.mpp else None)


def _region_counts(feats: list[dict], names: list[str], bg: int | None) -> dict[str, int]:
    """GeoJSON regions per non-background class."""
    return {n: sum(1 for x in feats if x["properties"]["classification"]["name"] == n)
            for i, n in enumerate(names) if i != bg}


def _image_record(f: Path, out_dir: Path, lab0: np.ndarray, counts: dict[str, int], names: list[str],
                  placement: tuple[float, float, float] | None = None, mpp: float | None = None) -> dict:
    """The record of a predicted image from its label map and region counts; a QuPath tile's (``placement``: its
    downsample d) in its slide's level-0 pixels (sizes times d, areas times d², as its GeoJSON), at ``mpp``."""
    labels_p, prob_p, overlay_p, geo_p = output_paths(out_dir, image_stem(f))
    H, W = lab0.shape
    d = placement[0] if placement is not None else 1.0
    px = np.bincount(lab0.ravel(), minlength=len(names))
    return {"input": str(f), "kind": "image", "labels": str(labels_p), "probs": str(prob_p),
            "overlay": str(overlay_p), "geojson": str(geo_p), "regions": counts,
            "level0_size": [round(W * d), round(H * d)],
            "area_level0_px": {n: float(px[i]) * d * d for i, n in enumerate(names)},
            **({"mpp": mpp} if placement is not None else {})}


def _record_from_outputs(f: Path, is_slide: bool, out_dir: Path, cfg, placement=None, mpp=None) -> dict:
    """The record of an input predicted earlier, read back from its outputs (a slide's summary JSON; an image's
    label PNG and GeoJSON): rows of predictions.csv that a killed batch did not write."""
    from histowsss.data.io import read_mask
    from histowsss.slides.predict import slide_output_paths

    if is_slide:
        return json.loads(slide_output_paths(out_dir, image_stem(f))[-1].read_text())
    labels_p, _, _, geo_p = output_paths(out_dir, image_stem(f))
    feats = json.loads(geo_p.read_text())["features"]
    names = cfg.data.classes.names
    counts = _region_counts(feats, names, cfg.data.classes.background_index)
    return _image_record(f, out_dir, read_mask(labels_p), counts, names, placement, mpp)


def _summary_row(rec: dict, images_mpp: float | None) -> dict[str, str]:
    """The predictions.csv row of an image record (fractions of the image) or a slide record (of its tissue)."""
    slide = rec["kind"] == "slide"
    w, h = rec["level0_size"]
    return summary_row(input_path=rec["input"], kind=rec["kind"], width=w, height=h,
                       mpp=rec["mpp"] if "mpp" in rec else images_mpp, basis="tissue" if slide else "image",
                       basis_px=rec["tissue_or_class_level0_px"] if slide else float(w * h),
                       class_px=rec["area_level0_px"],
                       regions=rec["regions"], geojson=rec["geojson"])


def predict(inputs: list[Path] = typer.Argument(..., help="image files and/or folders of images"),
            run_dir: Path = typer.Option(..., "--run", "-r", help="run folder with a trained segmentation network, "
                                                      "or a model folder written by `histowsss export`"),
            out: Path = typer.Option(..., "--out", "-o", help="output folder (made if missing; not a file)"),
            overwrite: bool = typer.Option(False, help="replace existing outputs"),
            skip_existing: bool = typer.Option(False, help="go on with a killed batch: inputs whose outputs all "
                                               "exist are skipped, the others predicted (a slide's cached tiles "
                                               "reused)"),
            recursive: bool = typer.Option(False, "--recursive", "-R", help="also the images in sub-folders of the "
                                           "folders given (output names must stay unique)"),
            qupath_tiles: bool = typer.Option(False, help="the inputs are tiles QuPath's tile exporter wrote, named "
                                              "'<slide> \\[d=2,x=..,y=..,w=..,h=..]': their GeoJSON is placed on the "
                                              "slide (level-0 pixels), to import onto the slide itself"),
            skip: Optional[list[str]] = typer.Option(None, "--skip", help="leave out files of the folders whose name "
                                                     "matches this pattern, e.g. '*-labelled.png' (QuPath's label "
                                                     "tiles beside the images); repeatable"),
            supervised: bool = typer.Option(False, help="use the supervised upper-bound network (seg_supervised)"),
            device: Optional[str] = typer.Option(None, help="device (default: the run config's)"),
            simplify: float = typer.Option(1.0, min=0.0, help="GeoJSON polygon simplification tolerance, level-0 "
                                           "pixels (a region thinner than about twice it may vanish)"),
            min_area: float = typer.Option(16.0, min=0.0, help="drop GeoJSON regions (and fill holes) smaller than "
                                           "this (level-0 pixels^2)"),
            downsample: Optional[float] = typer.Option(
                None, help="slides: level-0 slide pixels per network pixel (default: from the slide's mpp and the "
                "run's data.mpp / data.image_scale)"),
            slide_mpp: Optional[float] = typer.Option(None, min=1e-6, help="slides: level-0 microns per pixel, "
                                                      "where the slide's metadata lacks it or is wrong"),
            train_mpp: Optional[float] = typer.Option(None, min=1e-6, help="slides: microns per pixel of the run's "
                                                      "training images (default: the run config's data.mpp)"),
            slide_tile: int = typer.Option(1024, min=16, help="slides: tile size in network pixels (a multiple of "
                                           "--out-factor)"),
            slide_margin: int = typer.Option(64, min=0, help="slides: context read around every tile, network pixels"),
            out_factor: int = typer.Option(4, min=1, help="slides: outputs are this many times coarser than the "
                                           "network's resolution"),
            tissue_threshold: Optional[float] = typer.Option(None, help="slides: HSV saturation above which a "
                                                             "thumbnail pixel is tissue (default: Otsu, clipped to "
                                                             "0.05-0.2)"),
            slide_backend: str = typer.Option("auto", help="slides: auto (openslide, else tiffslide), openslide or "
                                              "tiffslide"),
            no_crop: bool = typer.Option(False, "--no-crop", help="slides: GeoJSON in the uncropped level-0 frame "
                                         "(for QuPath images opened with --no-crop); default: QuPath's frame, which "
                                         "starts at openslide.bounds-x/y where the slide has them (.mrxs)"),
            colors: Optional[str] = typer.Option(None, "--colors", help="class colours of the overlays and the "
                                                 "GeoJSON, 'CLASS=#rrggbb,...' (default: the run's "
                                                 "data.classes.colors; changed there, every step would be made "
                                                 "again)"),
            cpu_amp: Optional[bool] = typer.Option(
                None, "--cpu-amp/--no-cpu-amp", help="bfloat16 inference on the CPU for the segmentation network and "
                "the image gate's classifier (default: the run's eval_seg.cpu_amp / make_cam.cpu_amp); --no-cpu-amp "
                "on CPUs without bfloat16 instructions, where it is emulated and slower; ignored on a GPU"),
            ) -> None:
    """Segment images or whole-slide images with a run's network: labels PNG, probabilities, overlay and QuPath
    GeoJSON per input (slides: tiled over their tissue at the training resolution, plus a summary JSON).

    An input that cannot be read (not an image, damaged, grayscale, a slide that does not open) is skipped and the
    batch goes on; the command ends by listing the skipped inputs with their reasons and exits with code 1."""
    with clear_errors():
        if slide_tile % out_factor:  # checked before any slide is opened
            raise ValueError(f"--slide-tile {slide_tile} must be a multiple of --out-factor {out_factor}, e.g. "
                             f"{max(out_factor, slide_tile - slide_tile % out_factor)}")
        if skip_existing and overwrite:
            raise ValueError("--skip-existing keeps finished outputs and --overwrite replaces them: pass one")
        from histowsss.engine.run_paths import absolute, run_folder_paths

        # (predictions.csv names inputs and outputs by absolute paths, whichever folder the run's paths are read from)
        out, inputs = absolute(out), [absolute(p) for p in inputs]
        how_to_go_on = "finished inputs and a slide's finished tiles are kept; run the same command with " \
                       "--skip-existing to go on"
        skipped: list[tuple[Path, str]] = []
        with run_folder_paths(run_dir, out, *inputs, log=log_line) as (run_dir, out, *inputs), \
                stop_on_interrupt(how_to_go_on, log_line):
            recs = predict_images(run_dir, list(inputs), out, overwrite=overwrite,
                                  network="seg_supervised" if supervised else "seg", device=device,
                                  simplify=simplify, min_area=min_area, log=log_line, recursive=recursive,
                                  skip_names=skip, qupath_tiles=qupath_tiles,
                                  cpu_amp=cpu_amp, skip_existing=skip_existing, skipped=skipped,
                                  colors=_colour_option(colors),
                                  slide_options=SlideOptions(downsample, slide_mpp, train_mpp, slide_tile,
                                                             slide_margin, out_factor, tissue_threshold,
                                                             slide_backend, no_crop))
    n_slides = sum(r.get("kind") == "slide" for r in recs)
    log_line(f"{len(recs) - n_slides} image(s)" + (f", {n_slides} slide(s)" if n_slides else "") + f" -> {out}")
    if skipped:  # the batch went on past them; scripts notice by the exit code
        log_line("error: " + skipped_report(skipped, len(recs)))
        raise typer.Exit(1)
