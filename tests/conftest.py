"""Shared fixtures: a small on-disk dataset builder (RGB PNGs + masks + manifest) and the GlaS folder."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
GLAS_DIR = REPO_ROOT.parent / "shared/data/glas"

BASE_COLUMNS = ("image", "mask", "split", "patient", "label")


class DatasetBuilder:
    """Writes small images, masks and manifests under ``root`` (paths in the manifest are relative to it).

    >>> b.row("a", split="train", patient="p1", label="malignant")  # writes images/a.png + masks/a.png
    >>> b.manifest([row, ...])                                        # writes manifest.csv, returns its path
    """

    def __init__(self, root: Path):
        self.root = root
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)

    def image(self, name: str, h: int = 24, w: int = 32, seed: int = 0, mode: str = "RGB") -> str:
        """Write an H&E-ish random image (PIL ``mode``) and return its relative path."""
        rng = np.random.default_rng(seed)
        rgb = rng.integers(60, 240, size=(h, w, 3), dtype=np.uint8)
        if mode == "RGB":
            im = Image.fromarray(rgb)
        elif mode == "L":
            im = Image.fromarray(rgb[..., 0])
        elif mode == "RGBA":
            im = Image.fromarray(np.dstack([rgb, np.full((h, w), 255, np.uint8)]), "RGBA")
        else:
            raise ValueError(mode)
        rel = f"images/{name}.png"
        im.save(self.root / rel)
        return rel

    def mask(self, name: str, h: int = 24, w: int = 32, values: np.ndarray | None = None) -> str:
        """Write a single-channel uint8 mask (default: a 0/255 square in the middle) and return its path."""
        if values is None:
            values = np.zeros((h, w), np.uint8)
            values[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
        rel = f"masks/{name}.png"
        Image.fromarray(np.asarray(values, dtype=np.uint8)).save(self.root / rel)
        return rel

    def row(self, name: str, split: str = "train", patient: str | None = None, label: str = "malignant",
            h: int = 24, w: int = 32, mask: bool = True, seed: int = 0) -> dict[str, str]:
        """Write an image (and its mask) and return the manifest row."""
        r = {"image": self.image(name, h, w, seed=seed), "mask": self.mask(name, h, w) if mask else "",
             "split": split, "patient": patient if patient is not None else name, "label": label}
        return r

    def manifest(self, rows: list[dict[str, Any]], name: str = "manifest.csv",
                 columns: list[str] | tuple[str, ...] | None = None) -> Path:
        """Write the rows (only ``columns`` if given) as a CSV and return its path."""
        cols = list(columns) if columns is not None else list(rows[0].keys() if rows else BASE_COLUMNS)
        path = self.root / name
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({c: r.get(c, "") for c in cols})
        return path


@pytest.fixture
def builder(tmp_path: Path) -> DatasetBuilder:
    """A dataset builder writing into a fresh temporary folder."""
    return DatasetBuilder(tmp_path / "ds")


def _data_config(manifest: Path, **kw: Any):
    """A DataConfig for the builder's datasets: benign (background) / malignant, binary masks by image label."""
    from histowsss.config import DataConfig

    base: dict[str, Any] = dict(manifest=manifest, label_column="label",
                                classes={"names": ["benign", "malignant"], "background": "benign"},
                                mask_column="mask", mask_mode="binary_image_label")
    base.update(kw)
    return DataConfig.model_validate(base)


@pytest.fixture
def data_config():
    """``data_config(manifest, **overrides)`` -> DataConfig (benign background / malignant, binary_image_label)."""
    return _data_config


@pytest.fixture
def clean_manifest(builder: DatasetBuilder) -> Path:
    """Six good images of four patients, patient-disjoint train/test, both classes in both splits."""
    rows = [
        builder.row("a1", "train", "p1", "benign", seed=1),
        builder.row("a2", "train", "p1", "benign", seed=2),
        builder.row("b1", "train", "p2", "malignant", seed=3),
        builder.row("c1", "test", "p3", "benign", seed=4),
        builder.row("d1", "test", "p4", "malignant", seed=5),
        builder.row("d2", "test", "p4", "malignant", seed=6),
    ]
    return builder.manifest(rows)


@pytest.fixture
def demo_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder made ``tmp_path``, with a small manifest where the builtin demo config reads it
    (``runs/demo/data/manifest.csv``, as `histowsss demo` writes it), so that ``load_config("demo")`` plans: `run`
    refuses a missing manifest before any step. Returns the manifest."""
    monkeypatch.chdir(tmp_path)
    b = DatasetBuilder(tmp_path / "runs" / "demo" / "data")
    rows = [b.row(f"{split}{i}", split, f"P{i}", label, seed=i)
            for i, (split, label) in enumerate([("train", "benign"), ("train", "malignant"), ("val", "benign"),
                                                ("val", "malignant"), ("test", "benign"), ("test", "malignant")])]
    for r in rows:
        r["grade"] = r.pop("label")
    return b.manifest(rows)


@pytest.fixture
def glas_dir() -> Path:
    """The real GlaS folder (../shared/data/glas next to the repository); tests using it skip when absent."""
    if not (GLAS_DIR / "manifest.csv").exists():
        pytest.skip(f"GlaS data not found at {GLAS_DIR}")
    return GLAS_DIR


# --- whole-slide images: small pyramidal, tiled TIFFs (openslide's generic-tiff) with mpp -----------------

def write_slide(path: Path, rgb: np.ndarray, mpp: float | None = 0.5, levels: int = 3, tile: int = 64) -> Path:
    """Write ``rgb`` as level 0 of a tiled TIFF pyramid (each level half the previous, uncompressed)."""
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        lv = rgb
        for k in range(levels):
            kw: dict = {"subfiletype": 1} if k else {}
            if mpp is not None:
                kw.update(resolution=(1e4 / (mpp * 2**k),) * 2, resolutionunit="CENTIMETER")
            tif.write(lv, tile=(tile, tile), photometric="rgb", **kw)
            if min(lv.shape[:2]) < 2 * tile:
                break
            lv = np.asarray(Image.fromarray(lv).resize((lv.shape[1] // 2, lv.shape[0] // 2), Image.BILINEAR))
    return path


def tissue_slide_rgb(h: int = 300, w: int = 420, seed: int = 0) -> np.ndarray:
    """Glass (near-white) with two H&E-coloured blobs holding dark 'nuclei'; deterministic."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 242, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for cy, cx, r in ((90, 110, 70), (190, 300, 90)):
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img[blob] = (214, 120, 180)
    dots = rng.random((h, w)) < 0.02
    img[dots & (img[..., 0] < 230)] = (80, 40, 120)
    return img


@pytest.fixture
def make_slide():
    """``make_slide(path, rgb, mpp=0.5, levels=3, tile=64)`` writes a pyramidal tiled TIFF (skips without tiffslide)."""
    pytest.importorskip("tiffslide", reason="slide readers not installed (pip install 'histowsss[slides]')")
    return write_slide


@pytest.fixture
def slide_file(tmp_path: Path, make_slide) -> Path:
    """A 420 x 300 px slide at 0.5 um/px: glass with two tissue blobs."""
    return make_slide(tmp_path / "s.tif", tissue_slide_rgb())


# --- a tiny trained run: synthetic data, masks as pseudo-masks, train_seg + eval_seg ------------------------------

def build_trained_run(root: Path, splits: dict[str, int], overrides: list[str], cam_stage: bool = False) -> Path:
    """A run folder ``root/run`` (data in ``root/data``, config ``demo`` + ``overrides``) whose segmentation network
    trained on the masks of the train and val images, written as pseudo-masks; with ``cam_stage`` the CAM stage
    (train_cam .. eval_cam) ran first. Returns the run folder."""
    from histowsss.config import load_config
    from histowsss.data.masks import load_class_mask
    from histowsss.data.synthetic import generate_synthetic_dataset
    from histowsss.engine.atomic import write_png
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.run_dir import RunDir
    from histowsss.steps import make_sem_seg_labels
    from histowsss.steps.common import samples_for

    manifest = generate_synthetic_dataset(root / "data", splits, size=64)
    cfg = load_config("demo", [f"data.manifest={manifest}", *overrides])
    run = RunDir(root / "run", cfg).init()
    if cam_stage:
        run_pipeline(cfg, run, stop="eval_cam", log=lambda m: None)
    with run.step("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg)):
        for s in samples_for(cfg, ["train", "val"]):
            write_png(run.path / "pseudo" / f"{s.name}.png", load_class_mask(s, cfg.data))
    run_pipeline(cfg, run, start="train_seg", stop="eval_seg", log=lambda m: None)
    return run.path


@pytest.fixture(scope="session")
def trained_run_builder():
    """``build_trained_run(root, splits, overrides, cam_stage=False)`` for module-scoped fixtures."""
    return build_trained_run
