"""Step make_ins_seg_labels (IRN): instance pseudo-masks from the displacement field x the semantic pseudo-masks.

For every IRN image: the displacement field saved by make_sem_seg_labels (``irn/<name>.npz``) is followed to
centroids and clustered (reference ``find_centroids_with_refinement`` / ``cluster_centroids``), the clusters are
upsampled to the image and intersected with ``pseudo/<name>.png`` (see :mod:`histowsss.ops.instances`).
Writes ``instances/<name>.png`` (uint16 instance ids, 0 = background); on GlaS these are individual glands.

Deviation from the reference: it random-walks one CAM per (class, instance) and keeps fragments as scored
detections; here every foreground pixel of the semantic pseudo-mask takes the instance of its centroid cluster
(one walk per image instead of one per instance; the pseudo-mask is already the walked one).
"""

from __future__ import annotations

import numpy as np
from rich.progress import track

from histowsss.config import RunConfig
from histowsss.data.manifest import Sample
from histowsss.engine.atomic import read_npz, write_png
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.ops.instances import cluster_centroids, find_centroids, instances_from_clusters, upsample_nearest
from histowsss.steps import make_sem_seg_labels
from histowsss.steps.irn_common import STRIDE, fresh_dir, irn_samples, read_png, resuming

STEP = "make_ins_seg_labels"


def config_hash(cfg: RunConfig) -> str:
    """Hash of the config sections this step depends on."""
    sections = make_sem_seg_labels.BASE_SECTIONS + (("eval_cam",) if make_sem_seg_labels.uses_eval_cam(cfg) else ())
    return cfg.step_hash(*sections, "ins_seg")


def requires(cfg: RunConfig) -> list[tuple[str, str]]:
    """The finished steps (status record, config hash) this step reads: checked before a run starts."""
    return [("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg))]


def instances_for(dp: np.ndarray, semantic: np.ndarray, background: int | None, cfg: RunConfig) -> np.ndarray:
    """Instance map (H, W) uint16 from a displacement field (2, h, w) and a semantic map (H, W); every class but
    ``background`` (None: every class, as for tissue types) gets instances."""
    ic = cfg.ins_seg
    centroids = find_centroids(dp, ic.refine_iterations)
    clusters = cluster_centroids(centroids, dp, ic.cluster_threshold)
    full = upsample_nearest(clusters, STRIDE, semantic.shape)
    if full.shape != semantic.shape:
        raise StepError(f"displacement grid {dp.shape[1:]} does not cover the pseudo-mask {semantic.shape}")
    return instances_from_clusters(semantic, full, background, min_cluster_fraction=ic.min_cluster_fraction,
                                   min_area=ic.min_area)


def _process_image(cfg: RunConfig, run: RunDir, sample: Sample) -> int:
    """Write instances/<name>.png of one image; returns its number of instances."""
    dp = read_npz(run.path / "irn" / f"{sample.name}.npz", "delete it and re-run make_sem_seg_labels with "
                  "--overwrite")["dp"].astype(np.float32)
    semantic = read_png(run.path / "pseudo" / f"{sample.name}.png")
    inst = instances_for(dp, semantic, cfg.data.classes.background_index, cfg)
    write_png(run.path / "instances" / f"{sample.name}.png", inst)
    return int(inst.max())


def run(cfg: RunConfig, run: RunDir, overwrite: bool = False) -> dict:
    """Write instances/<name>.png for every IRN image."""
    h = config_hash(cfg)
    resume = resuming(run, STEP, h, overwrite)
    with run.step(STEP, h, overwrite=overwrite) as info:
        run.require("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg), STEP)
        samples = irn_samples(cfg)
        missing = [s.name for s in samples if not (run.path / "irn" / f"{s.name}.npz").exists()
                   or not (run.path / "pseudo" / f"{s.name}.png").exists()]
        if missing:
            raise StepError(f"{STEP}: outputs of make_sem_seg_labels missing for {len(missing)} image(s) "
                            f"(e.g. {', '.join(missing[:3])}); re-run make_sem_seg_labels --overwrite")
        fresh_dir(run, "instances", keep=resume)
        computed = reused = 0
        counts = []
        for s in track(samples, description=STEP):
            path = run.path / "instances" / f"{s.name}.png"
            if resume and path.exists():
                counts.append(int(read_png(path).max()))
                reused += 1
            else:
                counts.append(_process_image(cfg, run, s))
                computed += 1
        info.update(outputs=["instances/"], images=len(samples), computed=computed, reused=reused,
                    instances=int(sum(counts)), images_without_instances=int(sum(c == 0 for c in counts)))
        return {"images": len(samples), "instances": int(sum(counts)), "computed": computed, "reused": reused}
