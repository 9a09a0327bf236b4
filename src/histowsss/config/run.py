"""The whole pipeline's config (``RunConfig``): its sections, the step hashes that tie a step's files to its
settings, the fingerprints of the files it names, and the checks made before steps run."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import Field, model_validator

from histowsss.config.base import Strict
from histowsss.config.cam import BackboneConfig, EvalCamConfig, MakeCamConfig, TrainCamConfig
from histowsss.config.data import DataConfig, PointsConfig, data_split_leaks
from histowsss.config.irn import InsSegConfig, IrLabelConfig, SemSegConfig, TrainIrnConfig
from histowsss.config.seg import EvalSegConfig, TrainSegConfig
from histowsss.digest import file_sha256


# Config values that describe the data without changing any step's output: kept out of step hashes, so adding
# them to a finished run's config does not make steps redo their work.
# data.mpp: metadata; train_cam.small_images: refuse gives the mirror network or nothing; train_seg.channels_last: a
# memory layout, train_seg.fused_optimizer: a kernel (the same network up to float rounding, as with another thread
# count)
HASH_EXEMPT = ("data.mpp", "train_cam.small_images", "train_seg.channels_last", "train_seg.grad_checkpointing",
               "train_seg.fused_optimizer")
# Sections added after runs existed: in a step hash only when set (see RunConfig.step_hash).
LATE_SECTIONS = ("points",)


class RunConfig(Strict):
    """The whole pipeline's configuration."""

    name: str = "run"
    seed: int = Field(0, description="unused: every training step has its own (train_cam.seed, train_irn.seed, "
                      "train_seg.seed); kept so that older configs load")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    upper_bound: bool = Field(False, description="also train and evaluate the segmentation network on the "
                              "ground-truth masks (steps train_seg_supervised, eval_seg_supervised): the upper bound "
                              "of the report; needs masks for the training images")
    data: DataConfig
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    train_cam: TrainCamConfig = Field(default_factory=TrainCamConfig)
    make_cam: MakeCamConfig = Field(default_factory=MakeCamConfig)
    eval_cam: EvalCamConfig = Field(default_factory=EvalCamConfig)
    ir_label: IrLabelConfig = Field(default_factory=IrLabelConfig)
    train_irn: TrainIrnConfig = Field(default_factory=TrainIrnConfig)
    sem_seg: SemSegConfig = Field(default_factory=SemSegConfig)
    ins_seg: InsSegConfig = Field(default_factory=InsSegConfig)
    train_seg: TrainSegConfig = Field(default_factory=TrainSegConfig)
    eval_seg: EvalSegConfig = Field(default_factory=EvalSegConfig)
    points: PointsConfig = Field(default_factory=PointsConfig)

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        p = self.data.patches
        if self.eval_cam.label_gating == "patch" and (p is None or p.label_rule != "mask_fraction"):
            raise ValueError("eval_cam.label_gating=patch needs patch labels (data.patches with "
                             "label_rule: mask_fraction); use label_gating=image for image-level labels")
        if self.train_seg.patch_veto and (p is None or p.label_rule != "mask_fraction"):
            raise ValueError("train_seg.patch_veto needs patch labels (data.patches with label_rule: "
                             "mask_fraction); set train_seg.patch_veto=false for image-level labels")
        if self.train_seg.synthetic_fraction > 0:
            from histowsss.data.synthesis import SOURCE_FIX, synthesis_source

            if synthesis_source(self.data) is None:
                raise ValueError(f"train_seg.synthetic_fraction: {SOURCE_FIX}; an image label with an implicit "
                                 "background, or a patch label inherited from it, does not say a region is all one "
                                 "class; set train_seg.synthetic_fraction=0")
        if self.train_cam.network == "rpnet" and self.train_cam.pooling != "gap":
            raise ValueError("train_cam.pooling=topk is for network: cam (RPNet's branches pool by average); set "
                             "train_cam.pooling=gap or train_cam.network=cam")
        return self

    def step_hash(self, *sections: str) -> str:
        """Short hash of the named config sections (used to tie a step's files to its inputs).

        Only values that differ from the defaults enter the hash, so adding a new option (with a default that
        keeps the old behaviour) does not invalidate finished runs.
        """
        dump = self.model_dump(mode="json", exclude_defaults=True)
        for key in HASH_EXEMPT:  # metadata no step's output depends on
            section, name = key.split(".")
            dump.get(section, {}).pop(name, None)
        # a section added after runs existed enters only when it holds a non-default value, so those runs stay valid
        parts = {s: dump.get(s, {}) for s in sections if s not in LATE_SECTIONS or dump.get(s)}
        payload = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def backbone_digest(self) -> str | None:
        """Fingerprint (sha256) of the ``backbone.weights`` file (a local file, or for 'imagenet' the installed
        package's), recorded by the steps that read it, so that a file changed in place (or a weights package
        upgraded) makes them again; None for 'none' or a file that is not there. Kept out of the hashes: a run
        folder or an export without the file stays valid."""
        return self.weights_file_digest("backbone.weights")

    def weights_file_digest(self, key: str) -> str | None:
        """Fingerprint of the weights file that config key ``key`` ('backbone.weights', 'train_seg.encoder_weights')
        names, as :meth:`backbone_digest`."""
        section, name = key.split(".")
        w = getattr(getattr(self, section), name)
        if w == "none":
            return None
        if w == "imagenet":
            from histowsss.models.weights import packaged_weights_path

            model = self.backbone.name if section == "backbone" else self.train_seg.encoder
            try:
                return _file_fingerprint(packaged_weights_path(model))
            except Exception:  # no such package installed: the step that needs it says so
                return None
        return _file_fingerprint(Path(w).expanduser())

    def training_side_splits(self) -> set[str]:
        """The splits the training steps read (data.train_splits, val_splits, train_seg.splits): the manifest's
        training-side digests are made over these (ir_label.splits has its own, :meth:`irn_side_splits`: one digest
        for both would make train_cam again for a split only the IRN reads)."""
        return set(self.data.train_splits) | set(self.data.val_splits) | set(self.train_seg.splits or [])

    def irn_side_splits(self) -> set[str]:
        """The splits the IRN steps read (``ir_label.splits``, default train + val): the manifest's ``irn_``
        digests are made over these."""
        return set(self.ir_label.splits or (self.data.train_splits + self.data.val_splits))

    def manifest_digests(self) -> dict[str, str] | None:
        """Digests of what the manifest says, as the steps read it (row order, the order of an image's labels and
        columns no step reads aside): ``images`` (each image's name, file and split: all make_cam reads), ``rows``
        (those, with its patient and labels), ``mask_files`` (its mask and instance mask files, names and
        contents: a mask re-exported under its name counts) and ``image_files`` (each image file's
        :func:`image_fingerprint`: one replaced under its name counts), over all images and (``train_rows``,
        ``train_mask_files``, ``train_image_files``) over the training splits alone (data.train_splits, val_splits,
        train_seg.splits), and (``irn_rows``, ``irn_mask_files``, ``irn_image_files``) over the IRN's. Files are
        named from the folder image paths are read from (``data.root``, else the manifest's), so a project moved
        whole keeps them. Recorded in each step's status, so that a manifest
        edited in place (a label fixed, images added) makes the steps that read it again (not in the hashes: a run
        made before this record keeps its steps). None when the manifest cannot be read (the checks before a run say
        why). A file's contents are read again when its size, times or inode changed (kept between processes in a
        run folder: :meth:`RunDir.manifest_digests`). Within :func:`digests_held`, computed once per manifest."""
        path = Path(self.data.manifest)
        try:
            st = path.stat()
        except OSError:
            return None
        key = (st.st_size, st.st_mtime_ns, self.data.model_dump_json())
        held = (os.path.abspath(path), key, tuple(sorted(self.training_side_splits())),
                tuple(sorted(self.irn_side_splits())))
        if _DIGESTS_HELD is not None and held in _DIGESTS_HELD:
            return _DIGESTS_HELD[held]
        digests = self._manifest_digests(path, key)
        if _DIGESTS_HELD is not None:
            _DIGESTS_HELD[held] = digests
        return digests

    def _manifest_digests(self, path: Path, key: tuple) -> dict[str, str] | None:
        """:meth:`manifest_digests`, computed (the manifest's rows cached by ``key``, its files' digests by their
        size and modification time)."""
        from histowsss.data.manifest import data_root, manifest_path, patient_key, scan_manifest

        cached = _MANIFEST_ROWS.get(os.path.abspath(path))
        if cached is None or cached[0] != key:
            try:
                samples = scan_manifest(self.data)[0]
            except Exception:  # unreadable: nothing to compare (the checks before a run say why)
                return None
            root = data_root(self.data)

            def rel(p) -> str:
                try:
                    return os.path.relpath(p, root) if p else ""
                except ValueError:  # (another drive, on Windows)
                    return str(p)

            def cc(s) -> Path | None:  # (read as the instance masks are: data/masks.py)
                v = (s.extra.get("mask_cc") or "").strip()
                return manifest_path(root, v) if v else None

            rows = [(s.split, f"{s.name}\t{rel(s.image)}\t{s.split}", f"{patient_key(s.patient)}\t"
                     f"{';'.join(sorted(s.labels))}", f"{s.name}\t{rel(s.mask)}\t{rel(cc(s))}",
                     [str(f) for f in (s.mask, cc(s)) if f is not None], str(s.image)) for s in samples]
            cached = (key, rows)
            _MANIFEST_ROWS[os.path.abspath(path)] = cached  # (the latest per manifest: tune writes many)

        used: dict[str, set[str]] = {"images": set(), "masks": set()}  # (the fingerprints a run folder keeps)

        def content(f: str) -> str:  # a mask's bytes, read again when its size, times or inode changed
            f = os.path.abspath(f)
            used["masks"].add(f)
            return _fingerprint(_FILE_DIGESTS, f, lambda size: file_sha256(f)[:16])

        def image(f: str) -> str:
            used["images"].add(os.path.abspath(f))
            return image_fingerprint(f)

        train, irn = self.training_side_splits(), self.irn_side_splits()
        lines = [(row, f"{row}\t{labels}", m + "\t" + "\t".join(content(f) for f in files),
                  f"{row}\t{image(file)}", split)
                 for split, row, labels, m, files, file in cached[1]]
        _USED_FILES[os.path.abspath(path)] = used
        # (each image's split and fingerprint, under the digest of them all: a re-make can name the files replaced)
        prints = {row.split("\t", 1)[0]: [split, line[3].rsplit("\t", 1)[-1]]
                  for (split, row, *_), line in zip(cached[1], lines)}

        def digest(items) -> str:
            return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:16]

        out = {"images": digest(x[0] for x in lines), "rows": digest(x[1] for x in lines),
               "mask_files": digest(x[2] for x in lines), "image_files": digest(x[3] for x in lines)}
        _IMAGE_PRINTS[os.path.abspath(path)] = (out["image_files"], prints)
        for part, splits in (("train_", train), ("irn_", irn)):
            out.update({part + "rows": digest(x[1] for x in lines if x[4] in splits),
                        part + "mask_files": digest(x[2] for x in lines if x[4] in splits),
                        part + "image_files": digest(x[3] for x in lines if x[4] in splits)})
        return out

    def clicks_used_digest(self) -> str | None:
        """Digest of the clicks the steps use: each manifest image's clicks (points.file's and its points cell's,
        position and class, in the order they are applied), so that rows sorted, other line endings or spacing, or
        clicks on images the manifest lacks change nothing; None when no clicks are configured. Recorded in each
        step's status (``clicks_used``), so that a step the clicks act in is made again when they change (not in
        the hashes: a run made before this record keeps its steps). Clicks that cannot be read digest as the
        problem (the step then says it)."""
        if self.points.file is None and self.data.points_column is None:
            return None
        from histowsss.data.manifest import scan_manifest
        from histowsss.data.points import sample_points

        manifest, points = Path(self.data.manifest), Path(self.points.file) if self.points.file else None
        files = [manifest] + ([] if points is None else sorted(points.iterdir()) if points.is_dir() else [points])
        stamps = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else (str(p),) for p in files)
        key = (stamps, self.data.model_dump_json(), self.points.model_dump_json())
        if key in _CLICKS_USED:
            return _CLICKS_USED[key]
        h = hashlib.sha256()
        try:
            samples = scan_manifest(self.data)[0]
            for s in sorted(samples, key=lambda s: s.name):
                pts = sample_points(self, s)
                if pts:
                    h.update((s.name + "\t" + ";".join(f"{p.x!r},{p.y!r},{p.cls}" for p in pts) + "\n").encode())
        except Exception as e:  # (the step that reads them says what is wrong)
            h.update(f"unreadable: {type(e).__name__}: {e}".encode())
        out = _CLICKS_USED[key] = h.hexdigest()[:16]
        return out

    def clicks_digest(self) -> str | None:
        """Digest of the bytes the clicks are read from (``points.file``'s bytes, the manifest's non-empty
        ``data.points_column`` cells by image, in any row order): what records of before the clicks themselves
        (:meth:`clicks_used_digest`) hold; None when no clicks are configured. A file that cannot be read digests
        as such."""
        if self.points.file is None and self.data.points_column is None:
            return None
        h = hashlib.sha256()
        if self.points.file is not None:
            f = Path(self.points.file)
            if f.is_dir():  # a folder of QuPath exports: every export's name and bytes
                from histowsss.data.points import points_folder_files

                for g in points_folder_files(f):
                    h.update(g.name.encode() + b"\0" + g.read_bytes())
            else:
                h.update(f.read_bytes() if f.is_file() else b"(missing)")
        if self.data.points_column is not None:
            from histowsss.data.manifest import read_table

            try:
                _, rows = read_table(Path(self.data.manifest))
            except Exception:
                rows = []
            cells = sorted((r.get("name", "").strip() or r.get("image", "").strip(), r[self.data.points_column].strip())
                           for r in rows if (r.get(self.data.points_column) or "").strip())
            for name, cell in cells:
                h.update(f"{name}\t{cell}\n".encode())
        return h.hexdigest()[:16]


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}
_CLICKS_USED: dict[tuple, str] = {}  # clicks_used_digest by the manifest's and points file's sizes and times


_DIGESTS_HELD: dict | None = None  # manifest_digests by manifest, within digests_held


@contextmanager
def digests_held() -> Iterator[None]:
    """Within it, :meth:`RunConfig.manifest_digests` is computed once per manifest (its size, time and data
    settings): the checks before a run, a dry run and the stale marks ask it for every step, and each time every
    image and mask file is looked at."""
    global _DIGESTS_HELD
    outer = _DIGESTS_HELD
    if outer is None:
        _DIGESTS_HELD = {}
    try:
        yield
    finally:
        if outer is None:
            _DIGESTS_HELD = None


IMAGE_WHOLE = 16 << 20  # image files up to this size are hashed whole (tiles, GlaS's BMPs)
IMAGE_BLOCK, IMAGE_BLOCKS = 256 << 10, 32  # larger ones: this many blocks of this size, spread over the file
# absolute path -> ((size, mtime_ns, inode, ctime_ns), fingerprint, settled: whether a run folder may keep it)
_IMAGE_FINGERPRINTS: dict[str, tuple] = {}
_FILE_DIGESTS: dict[str, tuple] = {}  # (masks: their whole bytes)
_USED_FILES: dict[str, dict[str, set[str]]] = {}  # manifest -> the image and mask files its digests read
# manifest -> (its image_files digest, image name -> [split, fingerprint]), as last computed
_IMAGE_PRINTS: dict[str, tuple[str, dict[str, list[str]]]] = {}


def image_prints(cfg: "RunConfig") -> tuple[str, dict[str, list[str]]] | None:
    """(the ``image_files`` digest of ``cfg``'s manifest, each image's [split, fingerprint]) as the manifest is now;
    None when it cannot be read."""
    digests = cfg.manifest_digests()
    held = _IMAGE_PRINTS.get(os.path.abspath(cfg.data.manifest))
    return held if digests is not None and held is not None and held[0] == digests["image_files"] else None
SETTLE_NS = 2 * 10**9  # a file changed this recently may still be written: its fingerprint is not kept


def image_fingerprint(path: str) -> str:
    """An image file's size and the sha256 of its bytes: all of them up to 16 MiB (a pixel retouched in an
    uncompressed BMP counts), else 32 blocks of 256 KiB spread from its first byte to its last (a large image
    re-exported changes its compressed bytes throughout; an edit within one uncompressed stretch between blocks is
    not seen). A project copied whole keeps it. Read again when the file's size, times or inode changed (a file
    put in place with its old modification time has a new inode or change time); "(unreadable)" for a file that
    cannot be read (the checks before a run say why)."""
    return _fingerprint(_IMAGE_FINGERPRINTS, os.path.abspath(path), lambda n: f"{n}:{_hash_image_file(path, n)}")


def _fingerprint(store: dict[str, tuple], path: str, digest: Callable[[int], str]) -> str:
    """``store``'s fingerprint of the file at the absolute ``path`` (``digest(size)``), made again when its stat key
    changed; "(unreadable)" when it cannot be read."""
    try:
        fs = os.stat(path)
        key = (fs.st_size, fs.st_mtime_ns, fs.st_ino, fs.st_ctime_ns)
        entry = store.get(path)
        if entry is None or entry[0] != key:
            settled = time.time_ns() - max(fs.st_mtime_ns, fs.st_ctime_ns) > SETTLE_NS
            store[path] = (key, digest(fs.st_size), settled)
            _FINGERPRINTS_MADE[0] += 1
    except OSError:
        return "(unreadable)"
    return store[path][1]


def _hash_image_file(path: str, size: int) -> str:
    """sha256 (16 hex digits) of an image file's bytes: all of them up to IMAGE_WHOLE, else IMAGE_BLOCKS blocks."""
    if size <= IMAGE_WHOLE:
        return file_sha256(path)[:16]
    h = hashlib.sha256()
    last = size - IMAGE_BLOCK
    with open(path, "rb") as f:
        for k in range(IMAGE_BLOCKS):
            f.seek(last * k // (IMAGE_BLOCKS - 1))
            h.update(f.read(IMAGE_BLOCK))
    return h.hexdigest()[:16]


# the fingerprints kept in a run folder (status/cache/fingerprints.json) between processes: a manifest of many tiles
# is read whole once, not by every `run` or `report`
_FINGERPRINTS_MADE = [0]  # how many this process computed (read from files, not from a cache)
_CACHES_READ: set[str] = set()
_CACHES_WRITTEN: dict[str, int] = {}  # cache file -> _FINGERPRINTS_MADE when this process last wrote it


def read_fingerprints(path: Path) -> None:
    """Take the image and mask fingerprints kept in ``path`` (once per process; each is used while its file's size,
    times and inode are those it was made at). A missing, unreadable or damaged file is no cache."""
    key = os.path.abspath(path)
    if key in _CACHES_READ:
        return
    _CACHES_READ.add(key)
    try:
        doc = json.loads(Path(path).read_text())
        found = {name: {str(f): (tuple(int(v) for v in stat), str(fp), True)
                        for f, (stat, fp) in doc[name].items() if len(stat) == 4}
                 for name in ("images", "masks")}
    except Exception:  # (not JSON, other shapes, numbers out of range: the files are read again)
        return
    for store, name in ((_IMAGE_FINGERPRINTS, "images"), (_FILE_DIGESTS, "masks")):
        for f, entry in found[name].items():
            store.setdefault(f, entry)


def keep_fingerprints(path: Path, manifest: Path | str) -> None:
    """Write the fingerprints of the files ``manifest``'s digests read to ``path`` (atomically) when this process
    made new ones; files changed within the last seconds are left out (they may still be written). A folder that
    cannot be written is no error (the next process reads the files again)."""
    from histowsss.engine.atomic import write_text

    key = os.path.abspath(path)
    used = _USED_FILES.get(os.path.abspath(manifest))
    if used is None or _CACHES_WRITTEN.get(key, 0) == _FINGERPRINTS_MADE[0]:
        return
    doc = {name: {f: [list(e[0]), e[1]] for f in sorted(used[name]) if (e := store.get(f)) is not None and e[2]}
           for store, name in ((_IMAGE_FINGERPRINTS, "images"), (_FILE_DIGESTS, "masks"))}
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(doc, separators=(",", ":")) + "\n")
    except OSError:
        return
    _CACHES_WRITTEN[key] = _FINGERPRINTS_MADE[0]


def _file_fingerprint(path: Path) -> str | None:
    """sha256 of a file's bytes (cached by path, size and mtime: a 1.2 GB file is read once per process, ~1 s);
    None for a path that is no readable regular file (the loader says why when it needs it)."""
    try:
        st = path.stat()
        if not path.is_file():
            return None
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _FINGERPRINTS:
            _FINGERPRINTS[key] = file_sha256(path)[:16]
    except OSError:
        return None
    return _FINGERPRINTS[key]


def background_only_settings(cfg: "RunConfig") -> list[str]:
    """Settings that act on the background class, set in a config that has none (they would do nothing).

    Checked when steps are planned, not when a config loads, so run folders made before the check still load."""
    es = cfg.eval_seg
    if cfg.data.classes.background is not None:
        return []
    given = [f"eval_seg.{k}={getattr(es, k)}" for k in ("max_hole_area", "split_h") if getattr(es, k)]
    return [f"{', '.join(given)} needs a background class (holes are background, and touching objects are cut apart "
            "by background): with data.classes.background null set it to 0; min_object_area (small regions take "
            "the surrounding class) works without one"] if given else []


def split_leaks(cfg: RunConfig) -> list[str]:
    """Why the test images would be trained on or used to choose a setting (empty when they are held out): checked
    before steps run (`histowsss run`, `data check --config`), not on loading, so a finished run folder or exported
    model made before the check still loads for predict and report."""
    return data_split_leaks(cfg.data) + step_split_leaks(cfg)


def step_split_leaks(cfg: RunConfig) -> list[str]:
    """The steps' own split settings that name a test split (see :func:`split_leaks`)."""
    out = []
    test = set(cfg.data.test_splits)
    for key, splits, what in (("eval_cam.choose_on", cfg.eval_cam.choose_on, "thresholds are chosen on them"),
                              ("ir_label.splits", cfg.ir_label.splits, "the IRN trains on them"),
                              ("train_seg.splits", cfg.train_seg.splits, "the segmentation network trains on them")):
        leak = sorted(set(splits or []) & test)
        if leak:
            out.append(f"{key} names test split(s) {', '.join(leak)}: {what}; leave {key} unset (train + val) or "
                       "name training/validation splits only")
    return out


# manifest file -> ((size, time, data section), its rows as digested)
_MANIFEST_ROWS: dict[str, tuple] = {}
