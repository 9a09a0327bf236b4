import numpy as np

from histowsss.ops.label_band import ignore_boundary_band


def test_band_marks_exactly_the_pixels_near_another_class():
    lab = np.zeros((20, 30), np.uint8)
    lab[:, 15:] = 1
    out = ignore_boundary_band(lab, 2)
    cols = np.flatnonzero((out == 255).all(axis=0))
    assert cols.tolist() == [13, 14, 15, 16]          # two pixels either side of the edge between columns 14 / 15
    assert (out[:, :13] == 0).all() and (out[:, 17:] == 1).all()
    assert (lab[:, 15:] == 1).all()                    # the input is not changed


def test_ignore_pixels_neither_make_nor_stop_a_band_and_radius_zero_is_a_copy():
    lab = np.zeros((10, 10), np.uint8)
    lab[:, 5:] = 255                                   # one class next to ignore: no boundary
    assert (ignore_boundary_band(lab, 3) == lab).all()
    lab[:, 8:] = 1                                     # class 0 (cols 0-4) | ignore (5-7) | class 1 (8-9)
    assert (ignore_boundary_band(lab, 3) == lab).all()  # the classes are 4 px apart: no band within 3
    out = ignore_boundary_band(lab, 4)                 # within 4 px across the ignore gap: cols 4 and 8
    assert np.flatnonzero((out == 255).all(axis=0)).tolist() == [4, 5, 6, 7, 8]
    assert (out[:, :4] == 0).all() and (out[:, 9] == 1).all()
    out0 = ignore_boundary_band(lab, 0)
    assert (out0 == lab).all() and out0 is not lab
