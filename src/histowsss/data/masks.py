"""Turn stored masks into class-id maps, as the config says masks are encoded."""

from __future__ import annotations

import numpy as np

from histowsss.config import DataConfig
from histowsss.data.io import ImageReadError, lookup_ids, read_mask
from histowsss.data.manifest import Sample, data_root, manifest_path

IGNORE = 255
BINARY_MODES = ("binary", "binary_image_label")  # data.mask_mode values that read mask > 0 as foreground


def class_map_from_mask(raw: np.ndarray, sample: Sample, cfg: DataConfig) -> np.ndarray:
    """Class-id map (uint8, IGNORE = 255) from a raw mask.

    * ``class_ids``: values are class indices (255 kept as ignore).
    * ``binary``: mask > 0 is ``mask_foreground_class``; the rest is the background class (or index 0).
    * ``binary_image_label``: mask > 0 takes the image's own non-background label (so in an image labelled
      only background/normal, everything is background); with several non-background labels the mask is
      ambiguous and the foreground becomes IGNORE.

    Raw values in ``data.mask_ignore_values`` become IGNORE in every mode.
    """
    classes = cfg.classes
    bg = classes.background_index if classes.background_index is not None else 0
    ignored = np.isin(raw, cfg.mask_ignore_values) if cfg.mask_ignore_values else None
    if cfg.mask_mode == "class_ids":
        out = raw.astype(np.int64)
        if ignored is not None:
            out[ignored] = IGNORE
        bad = ((out >= len(classes.names)) | (out < 0)) & (out != IGNORE)  # negative: a signed label map
        if bad.any():
            raise ImageReadError(
                f"{sample.mask}: mask value(s) {sorted(np.unique(out[bad]).tolist())[:5]} are not class ids "
                f"(0..{len(classes.names) - 1}); set data.mask_mode to 'binary' if the mask is 0/255, or list values "
                "that mark pixels to leave out in data.mask_ignore_values (in the config, or for a command without "
                f"one --set data.mask_ignore_values=[{sorted(np.unique(out[bad]).tolist())[0]}])"
            )
        return out.astype(np.uint8)
    fg = raw > 0
    out = np.full(raw.shape, bg, dtype=np.uint8)
    if cfg.mask_mode == "binary":
        out[fg] = classes.index(cfg.mask_foreground_class)  # type: ignore[arg-type]
    else:
        own = [lab for lab in sample.labels if lab != classes.background]
        if len(own) == 1:
            out[fg] = classes.index(own[0])
        elif len(own) > 1:
            out[fg] = IGNORE
    if ignored is not None:
        out[ignored] = IGNORE
    return out


def mask_color_ids(cfg: DataConfig) -> dict[int, int] | None:
    """``data.mask_colors`` as packed 0xRRGGBB -> class id ('ignore' -> IGNORE), for ``read_mask``; None without."""
    if not cfg.mask_colors:
        return None
    return {int(v.strip()[1:], 16): cls for v, cls in _entries(cfg.mask_colors, cfg)}


def _entries(mapping: dict, cfg: DataConfig) -> list[tuple]:
    """(value, class id) of every value a ``mask_colors`` / ``mask_values`` entry lists ('ignore' -> IGNORE)."""
    return [(v, IGNORE if k == "ignore" else cfg.classes.index(k))
            for k, vs in mapping.items() for v in (vs if isinstance(vs, list) else [vs])]


def read_class_ids(path, cfg: DataConfig, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file's raw values as ``data`` reads them: stored ids, the ids of its colours (``mask_colors``), or of
    its values (``mask_values``)."""
    raw = read_mask(path, expected_hw=expected_hw, colors=mask_color_ids(cfg))
    if not cfg.mask_values:
        return raw
    ids = dict(_entries(cfg.mask_values, cfg))
    return lookup_ids(path, raw, ids, "mask value(s)", str, "data.mask_values", "{tumour: 1, ignore: 0}")


def load_class_mask(sample: Sample, cfg: DataConfig, image_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read ``sample.mask`` and convert it to a class-id map at the configured image scale."""
    if sample.mask is None:
        raise ImageReadError(f"{sample.image}: no mask in the manifest ({cfg.mask_column} column), and this step needs "
                             "one (evaluation; training labels read from masks); fill in the column or remove the row "
                             "(`histowsss data check` lists every such row)")
    raw = read_class_ids(sample.mask, cfg, expected_hw=image_hw)
    m = class_map_from_mask(raw, sample, cfg)
    if cfg.image_scale != 1.0:
        from histowsss.data.io import resize

        m = resize(m, cfg.image_scale, nearest=True)
    return m


INSTANCE_COLUMN = "mask_cc"


def load_instance_mask(sample: Sample, cfg: DataConfig, gt_class: np.ndarray,
                       background: int | None) -> np.ndarray | None:
    """Ground-truth instance ids from the manifest's ``mask_cc`` column, restricted to the foreground of ``gt_class``.

    ``None`` when the sample has no instance mask. Read at the configured image scale (nearest); pixels that are
    background or ignore in ``gt_class`` become 0.
    """
    from histowsss.data.io import resize

    rel = (sample.extra.get(INSTANCE_COLUMN) or "").strip()
    if not rel:
        return None
    path = manifest_path(data_root(cfg), rel)
    cc = read_mask(path).astype(np.int64)
    if cfg.image_scale != 1.0:
        cc = resize(cc, cfg.image_scale, nearest=True)
    if cc.shape != gt_class.shape:
        raise ImageReadError(f"{path}: instance mask {cc.shape} differs from the class mask {gt_class.shape}; "
                             f"fix the {INSTANCE_COLUMN} column or the file")
    fg = gt_class != IGNORE
    if background is not None:
        fg &= gt_class != background
    return np.where(fg, cc, 0)
