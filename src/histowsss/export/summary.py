"""`predictions.csv`: one row per predicted image or slide, the table a study reports (class area fractions,
region counts, areas in mm^2).

Fractions are of the image's pixels, or, for a slide, of its tissue (the tissue mask of the prediction joined
with every pixel called a non-background class, so that the areas agree with the GeoJSON). Areas in
mm^2 need the microns per pixel: the slide's own, or for images ``data.mpp`` of the run (images are assumed to
be at the training images' resolution). Areas and percents are of the label map (``<stem>_labels.png``, all its
regions); region counts are of the GeoJSON, which leaves out regions under ``predict --min-area`` (16 level-0
pixels by default), so a class can have area and no region. The file is an index over an output folder, one row per
output (keyed by the name of the GeoJSON, ``<stem>.geojson``, which names all of an input's outputs there):
predicting more inputs into the same folder adds their rows, and an output written again replaces its row, whatever
path named its input (relative or absolute, or another image of the same name).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from histowsss.engine.atomic import write_text

SUMMARY_FILE = "predictions.csv"
FIRST_COLUMNS = ["input", "kind", "width", "height", "mpp", "basis", "basis_mm2"]


def summary_row(*, input_path: str, kind: str, width: int, height: int, mpp: float | None, basis: str,
                basis_px: float, class_px: dict[str, float], regions: dict[str, int], geojson: str) -> dict[str, str]:
    """One row: per non-background class (the keys of ``regions``) its percent of ``basis_px``, region count and
    mm^2; ``class_px`` are level-0 pixel areas."""
    mm2 = (mpp * 1e-3) ** 2 if mpp else None
    row = {"input": input_path, "kind": kind, "width": str(width), "height": str(height),
           "mpp": "" if mpp is None else f"{mpp:g}", "basis": basis,
           "basis_mm2": "" if mm2 is None else f"{basis_px * mm2:.4f}"}
    for name, n in regions.items():
        px = class_px.get(name, 0.0)
        row[f"{name}_percent"] = f"{100 * px / basis_px:.2f}" if basis_px > 0 else ""
        row[f"{name}_regions"] = str(n)
        row[f"{name}_mm2"] = "" if mm2 is None else f"{px * mm2:.4f}"
    row["geojson"] = geojson
    return row


def output_key(geojson: str) -> str:
    """The key of a row: the file name of its GeoJSON output (``<stem>.geojson``, unique in an output folder), from a
    path written either way (``/`` or ``\\``, relative or absolute) or from the bare name."""
    return geojson.replace("\\", "/").rsplit("/", 1)[-1]


def _row_key(row: dict[str, str]) -> str:
    """A row's output key; a row without a GeoJSON (made by hand) is keyed by its input."""
    return output_key(row["geojson"]) if row.get("geojson") else "input:" + row.get("input", "")


def read_summary(out_dir: Path) -> dict[str, dict[str, str]]:
    """The rows of ``out_dir/predictions.csv`` by output key (:func:`output_key`; later rows of the same output, as
    older versions wrote beside the first, win); empty when there is none."""
    path = Path(out_dir) / SUMMARY_FILE
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {_row_key(r): r for r in csv.DictReader(f) if r.get("input") or r.get("geojson")}


def update_summary(out_dir: Path, rows: list[dict[str, str]], drop: list[str] = ()) -> Path:
    """Merge ``rows`` into ``out_dir/predictions.csv`` (one row per output: a row replaces the one of the same GeoJSON
    output, other rows kept; the rows of the outputs ``drop``, GeoJSON paths or names, removed) and write it
    atomically."""
    path = Path(out_dir) / SUMMARY_FILE
    merged = read_summary(out_dir)
    for key in drop:
        merged.pop(output_key(key), None)
    for r in rows:
        merged[_row_key(r)] = r
    columns = list(FIRST_COLUMNS)
    for r in merged.values():
        columns += [k for k in r if k not in columns and k != "geojson"]
    columns.append("geojson")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(merged.values())
    write_text(path, buf.getvalue())
    return path


def summarised_inputs(out_dir: Path) -> set[str]:
    """The inputs ``out_dir/predictions.csv`` has a row for (empty when there is none)."""
    return {r["input"] for r in read_summary(out_dir).values() if r.get("input")}


def summarised_outputs(out_dir: Path) -> set[str]:
    """The outputs (GeoJSON file names, :func:`output_key`) ``out_dir/predictions.csv`` has a row for."""
    return {k for k in read_summary(out_dir) if not k.startswith("input:")}


class SummaryBuffer:
    """Rows for ``predictions.csv`` merged into it every ``every_s`` seconds and on :meth:`flush` (also when a
    ``with`` block ends by an error), so a long batch keeps its finished rows without rewriting the whole file after
    every input (which would cost time quadratic in the batch)."""

    def __init__(self, out_dir: Path, every_s: float = 10.0):
        import time

        self.out_dir, self.every_s, self._clock = Path(out_dir), every_s, time.monotonic
        self.pending: list[dict[str, str]] = []
        self.dropped: list[str] = []
        self.last = self._clock()

    def add(self, row: dict[str, str]) -> None:
        self.pending.append(row)
        if self._clock() - self.last >= self.every_s:
            self.flush()

    def drop(self, geojson: str) -> None:
        """Remove the row of the output ``geojson`` (its path or name: an input predicted again that now has no
        outputs)."""
        self.dropped.append(geojson)

    def flush(self) -> None:
        if self.pending or self.dropped:
            update_summary(self.out_dir, self.pending, self.dropped)
            self.pending, self.dropped = [], []
        self.last = self._clock()

    def __enter__(self) -> "SummaryBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
