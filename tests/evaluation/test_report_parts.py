"""The report's building blocks: charts (epoch ticks are whole epochs inside the plotted range), tables, inline
images."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from histowsss.evaluation.report_parts import colorize, epoch_ticks, line_chart, png_data_uri, table


@pytest.mark.parametrize("x1, want", [(6, [1, 2, 3, 4, 5, 6]), (15, [1, 5, 10, 15]), (40, [1, 10, 20, 30, 40]),
                                      (8, [1, 2, 4, 6, 8]), (100, [1, 25, 50, 75, 100])])
def test_epoch_ticks_are_whole_epochs_from_the_first(x1: int, want: list[int]):
    assert epoch_ticks(1, x1) == [float(v) for v in want]


def test_fractional_range_gets_five_even_ticks():
    assert epoch_ticks(0.5, 2.5) == [0.5, 1.0, 1.5, 2.0, 2.5]


def test_chart_labels_its_x_axis_with_those_ticks():
    svg = line_chart({"loss": [(e, 1.0 / e) for e in range(1, 41)]}, "train_seg: loss terms")
    labels = re.findall(r'text-anchor="middle" font-size="10">([^<]+)</text>', svg)
    assert labels == ["1", "10", "20", "30", "40"]


def test_table_escapes_cells_and_aligns_named_columns_left():
    html = table([{"image": "<b>a&b</b>", "iou": 0.5, "n": None}], ["image", "iou", "n"], left=("image",),
                 row_class=lambda r: "nr")
    assert "&lt;b&gt;a&amp;b&lt;/b&gt;" in html and "<b>" not in html
    assert '<td class="l">&lt;b&gt;' in html and '<td class="">0.50</td>' in html and '<td class="">-</td>' in html
    assert '<tr class="nr">' in html


def test_colorize_paints_classes_and_ignore():
    rgb = colorize(np.array([[0, 1, 255]], np.uint8), ["#000000", "#ff0000"], ignore_color="#00ff00")
    assert rgb.tolist() == [[[0, 0, 0], [255, 0, 0], [0, 255, 0]]]


def test_png_data_uri_is_a_png_no_larger_than_asked():
    uri = png_data_uri(np.full((300, 600, 3), 200, np.uint8), max_side=240)
    assert uri.startswith("data:image/png;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert im.format == "PNG" and im.size == (240, 120)
