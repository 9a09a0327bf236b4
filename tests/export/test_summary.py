"""predictions.csv: per-input class fractions, regions and areas; merged across invocations."""

from __future__ import annotations

import csv
from pathlib import Path

from histowsss.export.summary import summary_row, update_summary


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_rows_hold_fractions_regions_and_areas(tmp_path: Path):
    img = summary_row(input_path="a.png", kind="image", width=100, height=50, mpp=0.5, basis="image", basis_px=5000,
                      class_px={"tumour": 1250, "normal": 3750}, regions={"tumour": 3}, geojson="a.geojson")
    assert img["tumour_percent"] == "25.00" and img["tumour_regions"] == "3"
    assert img["tumour_mm2"] == f"{1250 * 0.25e-6:.4f}" and img["basis_mm2"] == f"{5000 * 0.25e-6:.4f}"
    assert "normal_percent" not in img  # background is the rest
    slide = summary_row(input_path="s.svs", kind="slide", width=10, height=10, mpp=None, basis="tissue", basis_px=0,
                        class_px={}, regions={"tumour": 0}, geojson="s.geojson")
    assert slide["tumour_percent"] == "" and slide["tumour_mm2"] == "" and slide["mpp"] == ""


def test_the_index_merges_invocations(tmp_path: Path):
    def row(name: str, px: float, cls: str = "tumour") -> dict[str, str]:
        return summary_row(input_path=name, kind="image", width=10, height=10, mpp=None, basis="image",
                           basis_px=100, class_px={cls: px}, regions={cls: 1}, geojson=f"{name}.geojson")

    path = update_summary(tmp_path, [row("a.png", 10), row("b.png", 20)])
    path = update_summary(tmp_path, [row("b.png", 40), row("c.png", 5, cls="necrosis")])
    rows = {r["input"]: r for r in _read(path)}
    assert list(rows) == ["a.png", "b.png", "c.png"]
    assert rows["a.png"]["tumour_percent"] == "10.00" and rows["b.png"]["tumour_percent"] == "40.00"
    assert rows["c.png"]["necrosis_percent"] == "5.00" and rows["a.png"]["necrosis_percent"] == ""
    header = path.read_text().splitlines()[0].split(",")
    assert header[0] == "input" and header[-1] == "geojson"


def test_rows_are_merged_in_batches_and_on_failure(tmp_path):
    """A long batch does not rewrite predictions.csv after every input (quadratic); its rows still land when the
    interval has passed, on flush, and when the batch fails."""
    from histowsss.export.summary import SUMMARY_FILE, SummaryBuffer, summarised_inputs

    def row(name):
        return {"input": name, "kind": "image", "geojson": f"{name}.geojson"}

    buf = SummaryBuffer(tmp_path, every_s=3600)
    buf.add(row("a"))
    buf.add(row("b"))
    assert not (tmp_path / SUMMARY_FILE).exists()
    buf.flush()
    assert summarised_inputs(tmp_path) == {"a", "b"}
    try:
        with SummaryBuffer(tmp_path, every_s=3600) as rows:
            rows.add(row("c"))
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert summarised_inputs(tmp_path) == {"a", "b", "c"}
    now = SummaryBuffer(tmp_path, every_s=0)
    now.add(row("d"))
    assert "d" in summarised_inputs(tmp_path)


def test_one_row_per_output_whatever_path_named_the_input(tmp_path: Path):
    """Rows are keyed by their output (the GeoJSON's name): the same output predicted from another path (absolute
    instead of relative, another folder's image of the same name) replaces its row; duplicates an older version
    left in the file collapse to the latest; drop removes a row by its output."""
    from histowsss.export.summary import SUMMARY_FILE, summarised_outputs

    def row(inp: str, geojson: str, px: float) -> dict[str, str]:
        return summary_row(input_path=inp, kind="image", width=10, height=10, mpp=None, basis="image",
                           basis_px=100, class_px={"tumour": px}, regions={"tumour": 1}, geojson=geojson)

    out = tmp_path / "pout"
    update_summary(out, [row("pin/train_1.png", "pout/train_1.geojson", 10),
                         row("pin/train_2.png", "pout/train_2.geojson", 20)])
    update_summary(out, [row("pin4/train_1.png", "pout/train_1.geojson", 30)])
    path = update_summary(out, [row("/abs/pin/train_2.png", str(tmp_path / "pout" / "train_2.geojson"), 40)])
    rows = _read(path)
    assert [(r["input"], r["tumour_percent"]) for r in rows] == [("pin4/train_1.png", "30.00"),
                                                                ("/abs/pin/train_2.png", "40.00")]
    assert summarised_outputs(out) == {"train_1.geojson", "train_2.geojson"}
    # a file with stale duplicates (as older versions wrote it): one row per output after the next update
    text = path.read_text()
    (out / SUMMARY_FILE).write_text(text + text.splitlines()[1].replace("pin4/train_1.png", "old/train_1.png") + "\n")
    assert len(_read(path)) == 3
    path = update_summary(out, [], drop=[str(out / "train_2.geojson")])
    assert [r["input"] for r in _read(path)] == ["old/train_1.png"]
