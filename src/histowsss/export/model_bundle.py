"""A trained network as a small folder to share (``histowsss export``): what ``histowsss predict --run`` needs.

A run folder holds every step's files (CAMs, labels, training states: hundreds of MB on GlaS); the bundle holds only

* ``config.yaml`` and ``versions.json`` of the run (unchanged, so every config hash still matches);
* the network's checkpoints (``checkpoints/<tag>.safetensors`` + ``.json``, every ensemble member);
* with ``eval_seg.image_gate``: the CAM classifier (``checkpoints/cam.safetensors``, ``status/train_cam.json``) and
  eval_cam's chosen class-presence cut (``metrics/cam.json``) when the config does not fix the cut;
* ``model.json``: what the network is (classes and colours, resolution, architecture, members, training labels), its
  scores where the run evaluated it, and the size and SHA-256 of every file above;
* ``MODEL.md``: the same for people.

The bundle is written into a hidden temporary folder, loaded once as ``predict`` would load it, then renamed into
place; an existing bundle is replaced only with ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from histowsss.digest import file_sha256

MODEL_CARD = "model.json"


def bundle_files(run_path: Path, cfg, network: str = "seg") -> list[str]:
    """Paths (relative to ``run_path``) that ``predict`` reads for ``network``; errors name what is missing."""
    from histowsss.steps.segnet_io import segnet_meta

    meta = segnet_meta(run_path, network)
    files = ["config.yaml"] + (["versions.json"] if (run_path / "versions.json").exists() else [])
    for tag in meta.get("member_tags") or [network]:
        files.append(f"checkpoints/{tag}.safetensors")
        if (run_path / "checkpoints" / f"{tag}.json").exists():
            files.append(f"checkpoints/{tag}.json")
    if cfg.eval_seg.image_gate:
        gate = ["checkpoints/cam.safetensors", "status/train_cam.json"]
        if cfg.eval_seg.image_gate_cut is None:
            gate.append("metrics/cam.json")
        missing = [f for f in gate if not (run_path / f).exists()]
        if missing:
            raise FileNotFoundError(f"{run_path / missing[0]}: eval_seg.image_gate needs the run's CAM classifier and "
                                    "its chosen cut; run the CAM stage (`--to eval_cam`) or set eval_seg.image_gate="
                                    "false")
        files += gate
        named = (json.loads((run_path / "status/train_cam.json").read_text()).get("run_config")
                 if (run_path / "status/train_cam.json").exists() else None)
        if named and (run_path / named).exists():  # the config the shipped status record names
            files.append(named)
    missing = [f for f in files if not (run_path / f).exists()]
    if missing:
        raise FileNotFoundError(f"{run_path / missing[0]}: missing; re-run train_seg for this run folder")
    return files


def _scores(run_path: Path, network: str) -> dict[str, Any]:
    """mIoU and per-class IoU per evaluated split (eval_seg's metrics/<tag>.json), or {} when not evaluated."""
    path = run_path / "metrics" / f"{network}.json"
    if not path.exists():
        return {}
    m = json.loads(path.read_text())
    out = {}
    for split, e in {**m.get("splits", {}), **({"all": m["all"]} if m.get("all") else {})}.items():
        if isinstance(e, dict) and "miou" in e:
            out[split] = {"miou": e["miou"], "iou": {c: v["iou"] for c, v in e.get("per_class", {}).items()},
                          "images": e.get("images")}
    return out


def _clicks_in_labels(cfg, source: str | None) -> bool:
    """Whether clicks corrected the labels the network trained on: never ground truth; IRN pseudo-masks when clicks
    acted in ir_label or sem_seg; any weak labels when they acted in train_seg."""
    if source == "ground_truth" or (cfg.points.file is None and cfg.data.points_column is None):
        return False
    use = set(cfg.points.use_in)
    return "train_seg" in use or (source == "pseudo" and bool(use & {"ir_label", "sem_seg"}))


def _trained_with(run_path: Path, network: str) -> dict[str, str] | None:
    """The versions (histowsss and its commit, torch, ...) the network's training step recorded, or None."""
    from histowsss.steps.segnet_io import network_step

    try:
        record = json.loads((run_path / "status" / f"{network_step(network)}.json").read_text())
    except (OSError, ValueError):
        return None
    return record.get("versions")


def model_card(run_path: Path, cfg, network: str, files: list[str], bundle: Path,
               scores_stale: str | None = None) -> dict[str, Any]:
    """The content of ``model.json``."""
    from histowsss import __version__
    from histowsss.data.stain import effective_reference
    from histowsss.steps.image_gate import chosen_gate
    from histowsss.steps.segnet_io import segnet_meta

    meta = segnet_meta(run_path, network)
    classes = cfg.data.classes
    return {
        "format": "histowsss-model/1",
        "network": network,
        "exported_from": str(run_path.resolve()),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "histowsss_version": __version__,
        # the code that trained the network (its step's record; records made before it was kept: not known)
        "trained_with": _trained_with(run_path, network),
        "classes": [{"name": n, "color": classes.color(n)} for n in classes.names],
        "background": classes.background,
        "mpp": cfg.data.mpp,
        "image_scale": cfg.data.image_scale,
        "stain_normalization": cfg.data.stain_normalization,
        # the reference itself, so that the bundle says what its images were mapped to whatever a later default is
        "stain_reference": effective_reference(cfg.data.stain_normalization, cfg.data.stain_reference),
        "architecture": meta.get("architecture", cfg.train_seg.architecture),
        "encoder": meta.get("encoder", cfg.train_seg.encoder),
        # the weights the encoder started from, as train_seg recorded them ('imagenet', 'none', or a file by name
        # and sha256: a foundation model's licence then applies to this bundle, whose checkpoints hold the encoder),
        # and whether training left them as they were
        "encoder_weights": meta.get("encoder_weights") or _encoder_weights_then(cfg),
        "encoder_frozen": bool(meta.get("encoder_frozen", False)),
        "members": meta.get("members", 1),
        "trained_on": {"labels": meta.get("label_source"), "loss": meta.get("loss"), "epochs": meta.get("epochs"),
                       "images": meta.get("train_images")},
        "clicks": _clicks_in_labels(cfg, meta.get("label_source")),
        # with the gate the bundle carries the CAM classifier, its backbone's weights included (their licence
        # applies to the bundle: a foundation model's may forbid passing them on)
        "gate_classifier": ({"network": cfg.train_cam.network, "backbone": cfg.backbone.name,
                             "backbone_weights": _weights_name(cfg.backbone.weights),
                             **({"backbone_weights_sha256_16": _trained_on(run_path)}
                                if cfg.backbone.weights not in ("imagenet", "none") and _trained_on(run_path) else {})}
                            if cfg.eval_seg.image_gate else None),
        "inference": {"tta": cfg.eval_seg.tta, "scales": cfg.eval_seg.scales, "tile_size": cfg.eval_seg.tile_size,
                      "image_gate": cfg.eval_seg.image_gate,
                      "image_gate_cut": chosen_gate(run_path, cfg) if cfg.eval_seg.image_gate else None},
        "scores": {} if scores_stale else _scores(run_path, network),
        **({"scores_left_out": scores_stale} if scores_stale else {}),
        "files": {f: {"bytes": (bundle / f).stat().st_size, "sha256": file_sha256(bundle / f)} for f in files},
    }


def _trained_on(run_path: Path) -> str | None:
    """The fingerprint of the backbone weights file the CAM classifier was trained from, as train_cam recorded it
    (not the file as it is now)."""
    try:
        return json.loads((run_path / "status" / "train_cam.json").read_text()).get("backbone_weights")
    except (OSError, ValueError):
        return None


def _weights_name(w: str) -> str:
    """A weights setting as a shared card shows it: 'imagenet' / 'none', or a file by its name (not its folder)."""
    return w if w in ("imagenet", "none") else Path(w).name


def _encoder_weights_then(cfg) -> dict:
    """For a network trained before train_seg recorded its encoder weights: the config's setting, a file by name."""
    w = cfg.train_seg.encoder_weights
    return {"source": w} if w in ("imagenet", "none") else {"source": "file", "name": _weights_name(w)}


def card_markdown(card: dict[str, Any]) -> str:
    """``MODEL.md``: the model card for people."""
    classes = ", ".join(f"{c['name']} ({c['color']})" for c in card["classes"])
    t = card["trained_on"]
    lines = [
        f"# histowsss model: {card['network']}",
        "",
        f"- Classes: {classes}; background: "
        + (card["background"] if card["background"] is not None else "none (every pixel is one of the classes)"),
        f"- Input: images at {card['mpp'] or 'unknown'} um/px, scaled by {card['image_scale']} before the network; "
        f"stain normalisation: {card['stain_normalization']}"
        + (f" to {card['stain_reference']}" if card.get("stain_reference") else ""),
        f"- Network: {card['architecture']} on {card['encoder']}, {card['members']} member(s); trained {t['epochs']} "
        f"epochs on {t['images']} images with {t['labels']} labels ({t['loss']} loss)"
        + ("; the labels corrected by clicks" if card.get("clicks") else ""),
        *([f"- Encoder weights: the file {e['name']}"
           + (f" (sha256 {e['sha256_16']}...)" if e.get("sha256_16") else "")
           + (", kept frozen" if card.get("encoder_frozen") else ", fine-tuned")
           + "; the network's checkpoints hold them, so their licence applies to this folder"]
          if (e := card.get("encoder_weights") or {}).get("source") == "file" else []),
        f"- Inference: {card['inference']['tta']} test-time augmentation at scales {card['inference']['scales']}; "
        f"image-level gate: {card['inference']['image_gate']}"
        + (f" (a class is removed when the classifier gives it less than {card['inference']['image_gate_cut']:g})"
           if card["inference"].get("image_gate_cut") is not None else ""),
        *([f"- Image gate classifier: {g['network']} on {g['backbone']} (weights: {g['backbone_weights']}"
           + (f", sha256 {g['backbone_weights_sha256_16']}..." if g.get("backbone_weights_sha256_16") else "") + "); "
           "checkpoints/cam.safetensors holds those backbone weights, so their licence applies to this folder"]
          if (g := card.get("gate_classifier")) else []),
        *([f"- Trained with histowsss {w.get('histowsss', '?')}"
           + (f" (commit {w['histowsss_commit']})" if w.get("histowsss_commit") else "")
           + f", torch {w.get('torch', '?')}, timm {w.get('timm', '?')}"] if (w := card.get("trained_with")) else []),
        f"- Exported {card['exported_at']} by histowsss {card['histowsss_version']} from {card['exported_from']}",
        "",
        "Use: `histowsss predict --run THIS_FOLDER IMAGES_OR_SLIDES... --out OUT`",
        "",
    ]
    if card["scores"]:
        names = [c["name"] for c in card["classes"]]
        lines += ["| split | images | mIoU | " + " | ".join(f"IoU {n}" for n in names) + " |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]
        for split, s in card["scores"].items():
            ious = " | ".join(str(s["iou"].get(n, "")) for n in names)
            lines.append(f"| {split} | {s['images'] or ''} | {s['miou']} | {ious} |")
    elif card.get("scores_left_out"):
        lines.append(f"Scores left out: the run's were not made with this network ({card['scores_left_out']}).")
    else:
        lines.append("Not evaluated in its run (no eval_seg scores).")
    return "\n".join(lines) + "\n"


KILLED_COPY_AGE_S = 600.0  # a partial copy older than this is of an export killed hard (SIGKILL), not one running


def _remove_killed_copies(out: Path, log: Callable[[str], None] | None) -> None:
    """Remove the partial copies (``.<name>.*.partial`` folders beside ``out``) that exports killed hard left, once
    they are older than :data:`KILLED_COPY_AGE_S` (so a second export running now keeps its own)."""
    import glob

    for d in out.parent.glob(f".{glob.escape(out.name)}.*.partial"):
        try:
            old = d.is_dir() and time.time() - d.stat().st_mtime > KILLED_COPY_AGE_S
        except OSError:
            continue
        if old:
            shutil.rmtree(d, ignore_errors=True)
            if log is not None:
                log(f"removed {d}: the partial copy of an export that was killed")


def export_model(run_path: Path | str, out: Path | str, network: str = "seg", overwrite: bool = False,
                 log: Callable[[str], None] | None = None) -> Path:
    """Copy what ``predict`` needs of ``network`` from a run folder into the folder ``out``; returns ``out``.
    ``log``: told when the network is stale (made from inputs since made again)."""
    from histowsss.cli.predict_cmd import load_run_config
    from histowsss.engine.atomic import DIR_MODE, write_json, write_text
    from histowsss.engine.run_dir import StepError
    from histowsss.steps.segnet_io import check_network_input, load_segnet, network_described, network_step

    run_path, out = Path(run_path), Path(out)
    cfg = load_run_config(run_path)
    files = bundle_files(run_path, cfg, network)
    check_network_input(cfg, run_path, network)  # config.yaml rewritten by a later run: predict would refuse
    why = network_described(cfg, run_path, network)
    if why is not None:  # the bundle's config.yaml would not describe its network
        raise StepError(f"{run_path / 'config.yaml'} does not describe network {network} ({why}); finish the run "
                        f"(`histowsss run {run_path / 'config.yaml'}`), or go back to the settings the network was "
                        f"made with (`histowsss run {run_path}/config_history/<sha>.yaml`, its record names the file), "
                        "then export")
    from histowsss.engine.standing import steps_standing_or_none

    standing = steps_standing_or_none(cfg, run_path)
    stale = standing.get(network_step(network))
    if stale not in (None, "has not run") and log is not None:  # described, but made from inputs since remade
        log(f"note: network {network} is stale ({stale}); the export holds it as it is")
    from histowsss.engine.standing import METRICS_STEPS, metrics_standing

    scores_stale = metrics_standing(cfg, run_path, standing).get(network)  # scores of an earlier network: left out
    gate_stands = not cfg.eval_seg.image_gate or all(standing.get(k) is None for k in ("train_cam", "make_cam",
                                                                                       "eval_cam"))
    if scores_stale and gate_stands and standing.get(METRICS_STEPS[network], "").startswith(
            f"made from {network_step(network)}'s outputs"):
        scores_stale = None  # eval_seg scored this very network; only what it was trained from was made again since
    if scores_stale and log is not None:
        log(f"note: metrics/{network}.json does not follow from this network ({scores_stale}): the model card leaves "
            f"its scores out; run `histowsss run {run_path / 'config.yaml'} --from {METRICS_STEPS[network]}` first to "
            "have them")
    run_abs, out_abs = run_path.resolve(), out.resolve()
    if out_abs == run_abs or run_abs in out_abs.parents or out_abs in run_abs.parents:
        raise ValueError(f"{out}: export into a folder outside the run folder {run_path}, and not one holding it")
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):  # an empty folder is used
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and bundle_networks(out) is None)):
        # --overwrite replaces an earlier export, never a folder of other files (it would be deleted)
        raise FileExistsError(f"{out} exists and is not a model folder written by `histowsss export` "
                              f"(no {MODEL_CARD}); "
                              "--overwrite only replaces an earlier export: choose a new or empty --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_killed_copies(out, log)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    os.chmod(tmp, DIR_MODE)  # mkdtemp's folder is private (0700); a bundle is made to be shared
    try:
        for f in files:
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_path / f, tmp / f)
        card = model_card(run_path, cfg, network, files, tmp, scores_stale)
        write_json(tmp / MODEL_CARD, card)
        write_text(tmp / "MODEL.md", card_markdown(card))
        try:
            load_segnet(cfg, tmp, network)  # the bundle loads as predict will load it
            if cfg.eval_seg.image_gate:
                from histowsss.steps.image_gate import ClassifierGate

                ClassifierGate(cfg, tmp, "cpu")
        except StepError as e:  # (said of the run folder: the temporary copy goes with the error)
            raise StepError(str(e).replace(str(tmp), str(run_path))) from None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            out.rename(old / out.name)
            try:
                tmp.rename(out)
            except BaseException:  # the earlier bundle goes back where it was
                (old / out.name).rename(out)
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def bundle_networks(folder: Path) -> list[str] | None:
    """The networks an exported model folder holds (None: ``folder`` is a run folder, not an export)."""
    path = Path(folder) / MODEL_CARD
    if not path.exists():
        return None
    return [json.loads(path.read_text()).get("network", "seg")]


def bundle_file_state(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """The files of an exported model folder's card that are (missing, network weights changed, other files
    changed): bytes that differ from what ``export`` wrote (the card's sha256)."""
    card = json.loads((Path(folder) / MODEL_CARD).read_text())
    missing, weights, other = [], [], []
    for name, rec in (card.get("files") or {}).items():
        f = Path(folder) / name
        if not f.is_file():
            missing.append(name)
        elif f.stat().st_size != rec.get("bytes") or file_sha256(f) != rec.get("sha256"):
            (weights if name.endswith(".safetensors") else other).append(name)
    return missing, weights, other
