"""The report's training-curve charts: epoch ticks are whole epochs inside the plotted range."""

from __future__ import annotations

import re

import pytest

from histowsss.evaluation.report import epoch_ticks, line_chart


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
