"""Scratch run folders for model selection: they read a finished run's labels and write nothing back into it."""

from __future__ import annotations

import shutil
from pathlib import Path


def scratch_run(src: Path, dst: Path, keep: bool = False) -> None:
    """Make ``dst`` a run folder that sees ``src``'s finished upstream steps and weak labels, and nothing it could
    overwrite: status and metrics records are copied (but not those of the segmentation steps), ``pseudo/`` and
    ``cams/`` are symbolic links. An existing ``dst`` is wiped first unless ``keep`` (resuming a killed training).
    """
    if dst.exists() and not keep:
        shutil.rmtree(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for sub in ("status", "metrics"):
        (dst / sub).mkdir(exist_ok=True)
        for f in (src / sub).glob("*.json"):
            if not f.stem.startswith(("train_seg", "eval_seg", "seg")):
                shutil.copy2(f, dst / sub / f.name)
    if (src / "config_history").is_dir():  # the configs the copied status records name (run_config)
        shutil.copytree(src / "config_history", dst / "config_history", dirs_exist_ok=True)
    for sub in ("pseudo", "cams"):
        if (src / sub).exists() and not (dst / sub).exists():
            (dst / sub).symlink_to((src / sub).resolve(), target_is_directory=True)


def fit_on(cfg, run_path: Path, samples, overwrite: bool = True):
    """Train the segmentation network of ``cfg`` on ``samples`` only, in the scratch run folder ``run_path``
    (``overwrite=False``: resume a killed training there). Returns (metadata, model in eval mode on its device,
    device, training seconds)."""
    import time

    from histowsss.engine.distributed import init_distributed
    from histowsss.engine.run_dir import RunDir
    from histowsss.models.fuse import inference_model
    from histowsss.steps import train_seg

    rd = RunDir(run_path, cfg).init()
    ctx = init_distributed(cfg.device)
    t0 = time.time()
    try:
        meta, model = train_seg.fit(cfg, rd, ctx, train_seg.config_hash(cfg), overwrite, {}, samples=samples)
    finally:
        ctx.close()
    return meta, inference_model(model.eval(), ctx.device), ctx.device, time.time() - t0
