"""What a manifest says about its own data, read for ``histowsss init``: the label column and its separator, the
class names and which is background, the splits' roles, how the masks are written (and in which class order), the
training images' sizes and the tiling record of a tile manifest. Each reader raises ConfigError naming what to pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from histowsss.config import ConfigError
from histowsss.data.manifest import is_missing, read_csv_rows

BACKGROUND_NAMES = ("normal", "benign", "background", "healthy", "non-tumour", "non-tumor", "nontumour", "nontumor",
                    "non_tumour", "non_tumor", "negative", "stroma_normal", "norm")

def read_manifest_rows(manifest: Path, lines: list[int] | None = None) -> tuple[list[str], list[dict[str, str]]]:
    columns, rows = read_csv_rows(manifest, fix="pass the manifest CSV (make one from a folder of class "
                                  "sub-folders with `histowsss data manifest FOLDER --out manifest.csv`)", lines=lines)
    if not rows:
        raise ConfigError(f"{manifest}: no rows")
    return columns, rows


SEPARATORS = (";", ",", "|", "+")


def label_separator_of(rows: list[dict[str, str]], col: str | None) -> str:
    """The separator of several labels per cell: the first of SEPARATORS that some cell holds and by which the cells
    read as combinations: fewer distinct names than distinct cells ('TE', 'TE,NEC', 'NEC,STR', 'STR'), a cell with
    a part that is another cell's whole label ('TE,NEC' beside 'TE'), or a part found first in one cell and later in
    another ('TE,NEC' and 'NEC,STR'); ';' when none does (one label per image, or names that hold the character
    without being combinations, 'adenoma, low grade' and 'adenoma, high grade')."""
    values = {r.get(col, "").strip() for r in rows} - {""} if col else set()
    for sep in SEPARATORS:
        multi = [[p.strip() for p in v.split(sep) if p.strip()] for v in values if sep in v]
        if not multi:
            continue
        parts = {p for v in values for p in (q.strip() for q in v.split(sep)) if p}
        alone = values - {v for v in values if sep in v}
        positions: dict[str, set[int]] = {}
        for m in multi:
            for i, p in enumerate(m):
                positions.setdefault(p, set()).add(i)
        if (len(parts) < len(values) or any(p in alone for m in multi if len(m) > 1 for p in m)
                or any(len(pos) > 1 for pos in positions.values())):
            return sep
    return ";"


def class_column_and_names(manifest: Path, columns: list[str], rows: list[dict[str, str]], label_column: str | None,
             separator: str) -> tuple[str, list[str], bool]:
    col = label_column or ("label" if "label" in columns else None)
    if col is None or col not in columns:
        from histowsss.data.manifest import almost_class_columns

        raise ConfigError(f"{manifest}: no {(col or 'label')!r} column (columns: {', '.join(columns)})"
                          f"{almost_class_columns(columns, rows) if label_column is None else ''}; pass "
                          "--label-column COLUMN (the column of class names), or --label-columns A,B,... (one 0/1 "
                          "column per class)")
    multi = any(separator in r[col] for r in rows)
    names = sorted({v.strip() for r in rows for v in (r[col].split(separator) if multi else [r[col]])
                    if not is_missing(v)})  # 'NaN' (pandas' missing value) is no class: data check names the rows
    named = None if label_column or multi else code_names_column(columns, rows, col, names)
    if named is not None:  # 'label' holds codes (0 / 1) that another column names one for one (GlaS's grade)
        col = named
        names = sorted({r[col].strip() for r in rows if r[col].strip()})
    if len(names) < 2:
        raise ConfigError(f"{manifest}: column {col!r} holds {len(names)} class name(s) ({', '.join(names)}); "
                          "a classifier needs at least two classes")
    return col, names, multi


def class_name_twins(names: list[str]) -> list[list[str]]:
    """Groups of class names that differ only in case or spaces ('Te' beside 'TE', 'stroma ' beside 'stroma'):
    typos that would become classes of their own."""
    folded: dict[str, list[str]] = {}
    for n in names:
        folded.setdefault(" ".join(n.lower().split()), []).append(n)
    return [v for v in folded.values() if len(v) > 1]


def code_names_column(columns: list[str], rows: list[dict[str, str]], col: str, codes: list[str]) -> str | None:
    """A column whose values name the integer codes of ``col`` one for one (``grade`` beside a 0/1 ``label``), or
    None when the codes are no integers or no column (or more than one) names them so."""
    if not codes or not all(c.lstrip("-").isdigit() for c in codes):
        return None
    found = []
    for other in columns:
        low = other.lower()
        if other == col or low in ("image", "mask", "mask_cc", "split", "name", "points") or any(
                w in low for w in ("patient", "case", "slide", "subject", "donor", "specimen", "id")):
            continue
        pairs = {(r[col].strip(), r[other].strip()) for r in rows if r[col].strip()}
        values = {v for _, v in pairs}
        if (len(pairs) == len(codes) == len(values) and "" not in values
                and not all(v.lstrip("-").replace(".", "", 1).isdigit() for v in values)):
            found.append(other)
    return found[0] if len(found) == 1 else None


def background_class(names: list[str], given: str | None) -> str | None:
    """The background / normal class; None for ``--background none`` (tissue types: every pixel is a class)."""
    if given is not None:
        if given not in names and given.lower() == "none":
            return None
        if given not in names:
            raise ConfigError(f"--background {given!r} is not one of the manifest's classes: {', '.join(names)}; "
                              "or pass --background none when every pixel is one of the classes (tissue types)")
        return given
    found = [n for n in names if n.lower() in BACKGROUND_NAMES]
    if not found:  # a folder name of several words, 'Benign glands', 'normal mucosa' (not 'not normal')
        found = [n for n in names if any(w in BACKGROUND_NAMES for w in n.lower().split())
                 and not {"not", "no", "non"} & set(n.lower().split())]
    if len(found) != 1:
        raise ConfigError(f"cannot tell which class is background / normal (classes: {', '.join(names)}); pass "
                          "--background NAME: the class of images or pixels with none of the others, or "
                          "--background none when every pixel is one of the classes (tissue types such as tumour, "
                          "stroma, necrosis)")
    return found[0]


def split_role(name: str) -> str | None:
    """``train_splits``, ``val_splits`` or ``test_splits`` for a split named train*, val* / valid* / dev*, test*;
    None for other names."""
    low = name.lower()
    return ("train_splits" if low.startswith("train") else "val_splits" if low.startswith(("val", "dev"))
            else "test_splits" if low.startswith("test") else None)


def split_roles(manifest: Path, rows: list[dict[str, str]]) -> dict[str, list[str]]:
    values = list(dict.fromkeys(r.get("split", "") for r in rows))
    if "" in values:
        raise ConfigError(f"{manifest}: rows without a split; make one with `histowsss data split {manifest} --out "
                          "NEW.csv` (patient-grouped, class-stratified)")
    out: dict[str, list[str]] = {"train_splits": [], "val_splits": [], "test_splits": []}
    for v in values:
        key = split_role(v)
        if key is None:
            raise ConfigError(f"{manifest}: split {v!r} is not train*, val*, valid*, dev* or test*; rename it, or "
                              "write data.train_splits / val_splits / test_splits into the config yourself")
        out[key].append(v)
    if not out["train_splits"] or not out["test_splits"]:
        raise ConfigError(f"{manifest}: needs train and test splits (has: {', '.join(values)}); make them with "
                          f"`histowsss data split {manifest} --out NEW.csv`")
    return out


def mask_mode_of(root: Path, masks: list[str], names: list[str], background: str | None, ignore: list[int]
               ) -> tuple[dict[str, Any], str]:
    from PIL import Image

    values: set[int] = set()
    # up to 24 masks spread over the whole manifest (it is often sorted by class: the first few could all be
    # one class's and miss the values of the others)
    picks = sorted({int(i) for i in np.linspace(0, len(masks) - 1, min(len(masks), 24)).round()}) if masks else []
    colours: dict[int, int] = {}  # colour masks: packed 0xRRGGBB -> pixels
    for rel in (masks[i] for i in picks):
        p = root / rel
        try:
            with Image.open(p) as im:
                if im.mode in ("LA", "RGBA"):  # strokes on a transparent layer: the reader refuses them, say so now
                    from histowsss.data.io import drawn_in_alpha

                    if drawn_in_alpha(np.asarray(im)):
                        raise ConfigError(f"{p}: the mask is drawn in its alpha (transparency) channel: its colour "
                                          "is one value everywhere, so it would read as one class. Save the drawing "
                                          "as a one-channel mask of class ids (e.g. the alpha channel itself: 0 = "
                                          "background, 255 = foreground)")
                # a palette mask's pixels are its indices, the class ids (LUAD-HistoSeg, BCSS-WSSS): not colours
                arr = np.asarray(im.convert("RGB") if im.mode in ("RGB", "RGBA") else im)
                grey = arr.ndim == 2 or arr.shape[2] < 3 or (np.array_equal(arr[..., 0], arr[..., 1])
                                                             and np.array_equal(arr[..., 0], arr[..., 2]))
                if not grey:
                    from histowsss.data.io import pack_rgb

                    keys, counts = np.unique(pack_rgb(arr), return_counts=True)
                    for k, n in zip(keys.tolist(), counts.tolist()):
                        colours[k] = colours.get(k, 0) + n
                    continue
                values |= {int(v) for v in np.unique(arr if arr.ndim == 2 else arr[..., 0])} - set(ignore)
        except OSError as e:
            raise ConfigError(f"{p}: mask not readable ({e}); fix the file or its path in the manifest") from None
    if colours:
        top = sorted(colours, key=lambda k: -colours[k])[:12]
        raise ConfigError(f"the masks are colour images (colours {', '.join(f'#{k:06x}' for k in top)}"
                          f"{' ...' if len(colours) > 12 else ''}, most pixels first): say which class each colour is "
                          f"with --mask-colors 'CLASS=#rrggbb,...', one per class of {', '.join(names)} (and "
                          "ignore=#rrggbb for colours that are no class); which colour is which class only your "
                          "annotation tool's legend tells")
    # 0 / 1, 0 / 255 and 0 / 65535 (16-bit) masks are binary: mask > 0 is foreground
    binary = values <= {0, 1} or values <= {0, 255} or values <= {0, 65535}
    if binary and background is None and len(names) > 2:
        raise ConfigError(f"masks look binary ({sorted(values)}) but there is no background class to put mask 0 "
                          "in; give masks of class indices (0..., 255 = ignore), or name a background class")
    if binary and max(values, default=0) > 1 and background is None:
        top = max(values)
        raise ConfigError(f"masks look binary ({sorted(values)}) but there is no background class, and without one "
                          + ("255 means ignore: every foreground pixel would go unscored" if top == 255 else
                             f"{top} is no class") + "; name the background class (--background), or give masks of "
                          "class indices (0..., 255 = ignore)")
    if binary and background is not None:
        # binary_image_label, not binary: objects in an image labelled background (benign glands, say) stay background
        return ({"mask_mode": "binary_image_label"},
                f"masks look binary ({sorted(values)}): mask_mode binary_image_label (mask > 0 takes the image's own "
                f"label; images labelled {background} only are all background)")
    ids = values - {255}
    if ids and max(ids) < len(names):
        return {"mask_mode": "class_ids"}, f"mask values {sorted(values)}: mask_mode class_ids (index into the classes)"
    extra = sorted(v for v in ids if v >= len(names))
    ignore_hint = ""
    if ids and len(extra) <= 2:  # class indices, and one or two values over them: marks for "no class"?
        ignore_hint = (f"; if {', '.join(map(str, extra))} {'marks' if len(extra) == 1 else 'mark'} pixels that are no "
                       f"class (LUAD-HistoSeg and BCSS-WSSS mark white background 4), pass --mask-ignore "
                       f"{','.join(map(str, extra))}")
    raise ConfigError(f"masks hold values {sorted(values)[:10]} that are neither binary nor class indices (0..."
                      f"{len(names) - 1}, 255 = ignore){ignore_hint}; else say which class each value is with "
                      f"--mask-values '{names[0]}=1,...,ignore=0' (QuPath's labelled tiles: 0 = unannotated, then the "
                      "labels in the order they were added), or pass --mask-mode")


ORDER_CHECK_ROWS = 100  # masked, labelled rows read to check the class order (spread over the manifest)
ORDER_SEARCH_MAX = 7  # classes (less the background) whose orders are searched


def class_order_check(root: Path, rows: list[dict[str, str]], marked: list[tuple[str, ...]], names: list[str],
                       background: str | None, ignore: list[int], source: str, multi: bool) -> str | None:
    """Class-id masks index ``names`` in order (``source``: alphabetical, column order, --classes, tiling.json):
    check that order against the labels of masked rows. Multi-label rows (tissue types) name every class their mask
    holds; a single label names the class the mask must hold at least. ConfigError when another order (the
    background kept in its place) fits clearly better and the order was not the user's (alphabetical or column
    order: every score would be of swapped classes), naming the order to pass as --classes; a warning note when the
    order was given (--classes, tiling.json) or no order fits better; None when this one fits."""
    import itertools

    from histowsss.data.io import read_mask
    from histowsss.data.manifest import is_missing

    pairs = [(r["mask"], {x for x in m if not is_missing(x, names)} - {background}) for r, m in zip(rows, marked)
             if r.get("mask")]
    pairs = [(rel, labels) for rel, labels in pairs if labels]
    if len(pairs) < 3:
        return None
    picks = sorted({int(i) for i in np.linspace(0, len(pairs) - 1, min(len(pairs), ORDER_CHECK_ROWS)).round()})
    seen: list[tuple[frozenset[int], set[str], str]] = []
    for i in picks:
        rel, labels = pairs[i]
        try:
            ids = np.flatnonzero(np.bincount(read_mask(root / rel).ravel(), minlength=256)).tolist()
        except Exception:  # (an unreadable mask is data check's to name)
            continue
        seen.append((frozenset(int(v) for v in ids if v not in ignore and v != 255 and v < len(names)), labels, rel))
    if len(seen) < 3:
        return None

    def misfit(order: tuple[str, ...], ids: frozenset[int], labels: set[str]) -> bool:
        in_mask = {order[k] for k in ids} - {background}
        return bool(in_mask - labels) if multi else not labels & in_mask

    def wrong(order: tuple[str, ...]) -> int:
        return sum(misfit(order, ids, labels) for ids, labels, _ in seen)

    now = wrong(tuple(names))
    if now <= 0.1 * len(seen):
        return None
    free = [n for n in names if n != background]
    best = tuple(names)
    if len(free) <= ORDER_SEARCH_MAX:
        slots = [k for k, n in enumerate(names) if n != background]
        for perm in itertools.permutations(free):
            order = list(names)
            for k, n in zip(slots, perm):
                order[k] = n
            if wrong(tuple(order)) < wrong(best):
                best = tuple(order)
    ids, labels, rel = next(x for x in seen if misfit(tuple(names), x[0], x[1]))
    example = (f"{rel} holds {', '.join(sorted({names[k] for k in ids} - {background})) or 'only background'} "
               f"but is labelled {', '.join(sorted(labels))}")
    rule = "hold classes their labels do not name" if multi else "lack their labelled class"
    found = (f"{now} of {len(seen)} masked images {rule} in the order {', '.join(names)} ({source}; "
             f"mask value = position), e.g. {example}")
    better = best != tuple(names) and wrong(best) <= max(0.1 * len(seen), now / 4)
    if better and source in ("alphabetical", "column order"):
        raise ConfigError(f"{found}; in the order {', '.join(best)} only {wrong(best)} do: the masks number the "
                          f"classes in another order than the {source}, and every score would be of swapped "
                          f"classes. Pass --classes {','.join(best)} (the classes in mask-value order; a given order "
                          "is only warned about, so --classes in this order keeps it)")
    if better:
        return (f"warning: {found}; in the order {', '.join(best)} only {wrong(best)} do: check that {source} "
                "names the classes in mask-value order")
    searched = ("no order of the classes fits the labels better" if len(free) <= ORDER_SEARCH_MAX else
                f"other orders not searched ({len(free)} classes)")
    return (f"warning: {found}; {searched}: check the masks' values and the labels (`histowsss data check MANIFEST "
            "--config CONFIG` lists each such image)")


def short_sides(root: Path, images: list[str]) -> np.ndarray:
    """Short side of every training image (headers only): the crops follow the typical one, and the notes count
    the images under train_cam's crop (a sample could miss them)."""
    from histowsss.data.io import image_size

    return np.array([min(image_size(root / rel)) for rel in images])


def tiling_record(manifest: Path) -> dict:
    """The ``tiling.json`` ``histowsss data tiles`` wrote beside a tile manifest; {} for other manifests."""
    import json

    record = manifest.parent / "tiling.json"
    try:
        got = json.loads(record.read_text()) if record.is_file() else {}
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


def tiling_mask_classes(manifest: Path) -> list[str] | None:
    """The ``--mask-classes`` ``histowsss data tiles`` wrote a tile manifest's masks with, or None."""
    got = tiling_record(manifest).get("mask_classes")
    return [str(c) for c in got] if isinstance(got, list) and len(got) >= 2 else None


def tiling_mpp(manifest: Path) -> float | None:
    """The microns per pixel ``histowsss data tiles`` cut a tile manifest's tiles at; None for other manifests, or
    tiles cut by --downsample."""
    mpp = tiling_record(manifest).get("mpp")
    return float(mpp) if isinstance(mpp, (int, float)) and mpp > 0 else None
