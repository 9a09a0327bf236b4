"""The trained segmentation network on disk: its checkpoint files, their metadata, the input they expect, and
loading them back (a seed ensemble as one averaging network) for eval_seg, predict, slides and export."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from histowsss.config import RunConfig
from histowsss.engine.run_dir import StepError

if TYPE_CHECKING:
    import torch


def checkpoint_path(run_path: Path, tag_: str) -> Path:
    """``checkpoints/<tag_>.safetensors`` of a run folder (its metadata: the same name, ``.json``)."""
    return run_path / "checkpoints" / f"{tag_}.safetensors"


def build_from_meta(cfg: RunConfig, meta: dict, path: Path) -> torch.nn.Module:
    """The network of checkpoint ``path`` (architecture and normalisation from its metadata), in eval mode."""
    from histowsss.engine.checkpoints import load_weights
    from histowsss.models.segnet import build_segnet

    arch = {k: meta[k] for k in ("architecture", "encoder", "decoder_channels", "encoder_model_kwargs") if k in meta}
    if "architecture" in meta:  # a network recorded before encoder_model_kwargs existed was built without any
        arch.setdefault("encoder_model_kwargs", {})
    # the checkpoint holds every weight; the architecture is the one it was trained with (its metadata)
    ts = cfg.train_seg.model_copy(update={"encoder_weights": "none", **arch})
    model = build_segnet(ts, len(meta.get("classes", cfg.data.classes.names)))
    try:
        load_weights(path, model, device="cpu")
    except RuntimeError as e:
        raise StepError(f"{path}: does not fit the train_seg network of this config ({str(e)[:200]}); "
                        "re-run train_seg") from None
    if "mean" in meta:  # the normalisation the network was trained with
        model.mean, model.std = tuple(meta["mean"]), tuple(meta["std"])
    elif cfg.train_seg.encoder_weights == "imagenet":
        from histowsss.models.weights import PACKAGED_WEIGHTS

        spec = PACKAGED_WEIGHTS.get(cfg.train_seg.encoder)
        if spec is not None:
            model.mean, model.std = spec.mean, spec.std
    return model.eval()


def segnet_meta(run_path: Path, tag_: str) -> dict:
    """The metadata of the trained network ``tag_`` of a run folder ({} for checkpoints without); a clear error
    when the network was not trained."""
    path = checkpoint_path(run_path, tag_)
    if not path.exists():
        from histowsss.export.model_bundle import MODEL_CARD

        if (Path(run_path) / MODEL_CARD).is_file():  # an exported model folder missing its weights: not retrainable
            raise FileNotFoundError(f"{path}: this exported model folder lacks its network's weights (copied in "
                                    "part?); copy the whole folder again, or export it anew from its run folder "
                                    "(`histowsss export RUN_DIR --out DIR`)")
        hint = " --set train_seg.supervised=true" if tag_ == "seg_supervised" else ""
        raise FileNotFoundError(f"{path}: no trained segmentation network; run `histowsss run "
                                f"{_run_config(run_path)} --to train_seg{hint}` first")
    meta_path = path.with_suffix(".json")
    return json.loads(meta_path.read_text()) if meta_path.exists() else {}


def _run_config(run_path: Path) -> str:
    """How a suggested command names a run's config: the folder's own config.yaml (a run of it runs in that
    folder), else ``CONFIG --run RUN_DIR``."""
    own = Path(run_path) / "config.yaml"
    return shlex.quote(str(own)) if own.is_file() else f"CONFIG --run {shlex.quote(str(run_path))}"


def network_input(cfg: RunConfig) -> dict:
    """What the network's input depends on (resolution, stain normalisation) and what its outputs mean (classes):
    recorded with the network, checked by ``predict`` against the run folder's config.yaml."""
    d = cfg.data
    return {"classes": list(d.classes.names), "background": d.classes.background, "image_scale": d.image_scale,
            "mpp": d.mpp, "stain_normalization": d.stain_normalization, "stain_reference": d.stain_reference}


def check_network_input(cfg: RunConfig, run_path: Path, tag_: str) -> None:
    """StepError when config.yaml's data settings are not those the network was trained with (a later
    `histowsss run` with other --set values rewrote config.yaml); networks without the record pass."""
    trained = segnet_meta(run_path, tag_).get("input")
    if trained is None:
        return
    now = json.loads(json.dumps(network_input(cfg)))
    diff = [k for k in trained if trained[k] != now.get(k)]
    if diff:
        key = {"classes": "classes.names", "background": "classes.background"}
        settings = ", ".join(f"data.{key.get(k, k)} = {now.get(k)!r}" for k in diff)
        from histowsss.export.model_bundle import MODEL_CARD

        fix = ("this model folder was edited or exported from an inconsistent run folder; export the network again "
               "from a run folder whose config.yaml holds those values" if (run_path / MODEL_CARD).exists() else
               "a later run rewrote config.yaml; restore those values in config.yaml or re-run "
               f"`histowsss run CONFIG --run {run_path} --from train_seg`")
        raise StepError(f"{run_path / 'config.yaml'}: {settings}"
                        + f", but network {tag_} was trained with " + ", ".join(f"{trained[k]!r}" for k in diff)
                        + f" ({fix})")


def network_step(tag_: str) -> str:
    """The status record of the step that trains network ``tag_`` (seg, seg_supervised)."""
    return "train_seg_supervised" if tag_ == "seg_supervised" else "train_seg"


def network_described(cfg: RunConfig, run_path: Path, tag_: str) -> str | None:
    """Why config.yaml does not describe the trained network ``tag_`` of a run folder: its record did not finish
    with config.yaml's settings (a later run of other settings rewrote config.yaml and stopped before training it
    again, say); None when it did, or when the folder has no record of it (an exported model folder). Its inputs
    are not looked at (:func:`~histowsss.engine.standing.steps_standing` does)."""
    from histowsss.engine.earlier_records import legacy_match
    from histowsss.engine.run_dir import RunDir
    from histowsss.steps import train_seg, train_seg_supervised

    rd = RunDir(run_path, cfg)
    key = network_step(tag_)
    if tag_ == "seg_supervised":
        mod, net_cfg = train_seg_supervised, cfg
    else:  # (the weak network, also when config.yaml names the supervised one)
        mod = train_seg
        net_cfg = cfg.model_copy(update={"train_seg": cfg.train_seg.model_copy(update={"supervised": False})})
    st = rd.status(key)
    if st is None or rd.is_done(key, mod.config_hash(net_cfg)) or legacy_match(net_cfg, rd, key, mod) is not None:
        return None
    if st.get("state") != "done":
        return f"{key} did not finish with them ({st.get('state')})"
    diff = rd.settings_diff(st, step_hash=mod.config_hash)
    return f"{key} finished with other settings" + (f": {diff}" if diff else "")


def weights_fingerprint(run_path: Path, tag_: str) -> str:
    """Hash of the checkpoint files (names, sizes, modification times) of the trained network ``tag_`` and its
    ensemble members: which weights a cached prediction came from."""
    tags = segnet_meta(run_path, tag_).get("member_tags") or [tag_]
    items = []
    for mt in tags:
        p = checkpoint_path(run_path, mt)
        st = p.stat() if p.exists() else None
        items.append((str(p.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None))
    return hashlib.sha256(repr(items).encode()).hexdigest()[:12]


def weights_digest(run_path: Path, tag_: str) -> str:
    """SHA-256 of the bytes of the trained network ``tag_``'s checkpoints (every ensemble member): which model made
    a prediction, the same for a copy of the run folder or an exported bundle, another for any other weights."""
    tags = segnet_meta(run_path, tag_).get("member_tags") or [tag_]
    from histowsss.digest import hash_file

    h = hashlib.sha256()
    for mt in tags:
        p = checkpoint_path(run_path, mt)
        if p.exists():
            hash_file(h, p)
    return h.hexdigest()[:16]


def load_segnet(cfg: RunConfig, run_path: Path, tag_: str, device: torch.device | str = "cpu"):
    """The trained network ``tag_`` ('seg' / 'seg_supervised') of a run folder, in eval mode.

    A seed ensemble (trained with ``train_seg.members`` > 1; its members are listed in the checkpoint's metadata)
    comes back as one :class:`histowsss.models.segnet.SegEnsemble` that averages the members' probabilities.
    """
    from histowsss.models.fuse import inference_model

    meta = segnet_meta(run_path, tag_)
    models = []
    tags = meta.get("member_tags") or [tag_]
    for mt in tags:
        p = checkpoint_path(run_path, mt)
        if mt == tag_:  # the first member: its metadata is the network's own (possibly absent: older checkpoints)
            models.append(inference_model(build_from_meta(cfg, meta, p), device))
            continue
        if not (p.exists() and p.with_suffix(".json").exists()):
            raise StepError(f"{p}: ensemble member {mt} of {tag_} ({len(tags)} members) is missing; "
                            f"re-run train_seg (`histowsss run {_run_config(run_path)} --from train_seg --overwrite`)")
        m_meta = json.loads(p.with_suffix(".json").read_text())
        if m_meta.get("config_hash") != meta.get("config_hash"):
            raise StepError(f"{p}: ensemble member {mt} comes from another training run (config hash "
                            f"{m_meta.get('config_hash')} vs {meta.get('config_hash')}); re-run train_seg with "
                            "--overwrite")
        models.append(inference_model(build_from_meta(cfg, m_meta, p), device))  # fused copies keep mean / std
    if len(models) == 1:
        return models[0]
    from histowsss.models.segnet import SegEnsemble

    return SegEnsemble(models).eval()
