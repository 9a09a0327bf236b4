"""TIFF colour spaces (PhotometricInterpretation): each read in RGB as Pillow shows it, or refused with the fix."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histowsss.data.io import ImageReadError, read_mask, read_rgb

tifffile = pytest.importorskip("tifffile")


def _smooth(h: int = 32, w: int = 48) -> np.ndarray:
    """An RGB gradient (lossy codecs and colour conversions stay close to it)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x * 5, y * 7, 255 - x * 3]).astype(np.uint8)


def _silent_read(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RGBA / transparency warning, nothing else
        return read_rgb(path)


@pytest.mark.parametrize("compression", [None, "tiff_lzw"])
def test_cmyk_tiff_is_converted_as_pillow_converts_cmyk_not_taken_for_rgba(tmp_path, compression):
    a = _smooth()
    cmyk = Image.fromarray(a).convert("CMYK")
    cmyk.save(tmp_path / "c.tif", compression=compression)
    cmyk.save(tmp_path / "c.jpg", quality=100)
    rgb = _silent_read(tmp_path / "c.tif")
    assert rgb.shape == a.shape and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.asarray(cmyk.convert("RGB")))  # Pillow's CMYK -> RGB, exactly
    assert np.abs(rgb.astype(int) - a).max() <= 1
    assert np.abs(rgb.astype(int) - read_rgb(tmp_path / "c.jpg")).max() <= 4  # as the CMYK JPEG reads


def test_cmyk_tiff_written_by_tifffile_16bit_planar_and_with_alpha(tmp_path):
    a = _smooth()
    cmyk = np.asarray(Image.fromarray(a).convert("CMYK"))
    want = np.asarray(Image.fromarray(a).convert("CMYK").convert("RGB"))
    tifffile.imwrite(tmp_path / "c16.tif", cmyk.astype(np.uint16) * 257, photometric="separated")
    np.testing.assert_array_equal(_silent_read(tmp_path / "c16.tif"), want)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(cmyk, -1, 0), photometric="separated",
                     planarconfig="separate")
    np.testing.assert_array_equal(_silent_read(tmp_path / "planar.tif"), want)
    alpha = np.full(a.shape[:2], 255, np.uint8)
    alpha[0, 0] = 0
    tifffile.imwrite(tmp_path / "ca.tif", np.dstack([cmyk, alpha]), photometric="separated",
                     extrasamples=["unassalpha"], planarconfig="contig")
    with pytest.warns(UserWarning, match=r"ca\.tif: RGBA image with transparency"):
        out = read_rgb(tmp_path / "ca.tif")
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent: composited on white
    np.testing.assert_array_equal(out[1:], want[1:])


def test_separated_tiff_of_other_inks_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "inks.tif", np.zeros((8, 6, 4), np.uint8), photometric="separated",
                     planarconfig="contig", extratags=[(332, "H", 1, 2, True)])  # InkSet 2: not CMYK
    with pytest.raises(ImageReadError, match=r"inks\.tif: separated \(print\) TIFF .*not CMYK.*export it as an 8-bit "
                       r"RGB TIFF or PNG"):
        read_rgb(tmp_path / "inks.tif")


def test_palette_tiff_image_gives_its_colours_and_a_palette_mask_its_indices(tmp_path):
    ids = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 7) % 64  # 64 colours: an image saved with a palette
    im = Image.fromarray(ids, mode="P")
    palette = np.random.default_rng(0).integers(0, 256, (256, 3), np.uint8)
    palette[1], palette[7] = (255, 0, 0), (0, 128, 255)
    im.putpalette(palette.ravel().tolist())
    im.save(tmp_path / "pal.tif")
    rgb = _silent_read(tmp_path / "pal.tif")  # was refused as grayscale (the indices)
    np.testing.assert_array_equal(rgb, np.asarray(im.convert("RGB")))
    assert rgb[0, 1].tolist() == [0, 128, 255] and rgb[0, 0].tolist() == palette[0].tolist()
    assert read_mask(tmp_path / "pal.tif").tolist() == ids.tolist()
    # a colour map written with 8-bit values (all under 256) is taken as it is
    cmap = np.random.default_rng(1).integers(0, 256, (3, 256)).astype(np.uint16)  # 8-bit values in 16-bit slots
    cmap[:, 7] = (200, 100, 50)
    tifffile.imwrite(tmp_path / "pal8.tif", ids, photometric="palette", colormap=cmap)
    assert read_rgb(tmp_path / "pal8.tif")[0, 1].tolist() == [200, 100, 50]
    assert read_mask(tmp_path / "pal8.tif").tolist() == ids.tolist()
    # three colours: a label mask, as LUAD-HistoSeg ships them; refused as an image
    few = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    tifffile.imwrite(tmp_path / "mask.tif", few, photometric="palette", colormap=cmap)
    with pytest.raises(ImageReadError, match=r"mask\.tif: palette image of 3 colour\(s\): a label mask, it seems"):
        read_rgb(tmp_path / "mask.tif")
    assert read_mask(tmp_path / "mask.tif").tolist() == few.tolist()


def test_min_is_white_grey_tiff_image_refused_mask_keeps_its_stored_values(tmp_path, monkeypatch):
    m = np.zeros((8, 10), np.uint8)
    m[2:6, 3:8] = 255  # stored 255 (shown black): the foreground, as ImageJ's inverted-LUT masks mean it
    tifffile.imwrite(tmp_path / "mw.tif", m, photometric="miniswhite")
    with pytest.raises(ImageReadError, match=r"mw\.tif: grayscale image"):
        read_rgb(tmp_path / "mw.tif")
    assert read_mask(tmp_path / "mw.tif").tolist() == m.tolist()

    def no_codecs(*args, **kwargs):  # tifffile without the codec: Pillow, which inverts it, reads it instead
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_codecs)
    assert read_mask(tmp_path / "mw.tif").tolist() == m.tolist()  # the same stored values


def test_ycbcr_tiff_is_converted_to_rgb(tmp_path):
    a = _smooth()
    Image.fromarray(a).convert("YCbCr").save(tmp_path / "ycc.tif")  # uncompressed YCbCr
    rgb = _silent_read(tmp_path / "ycc.tif")
    np.testing.assert_array_equal(rgb, np.asarray(Image.open(tmp_path / "ycc.tif").convert("RGB")))
    assert np.abs(rgb.astype(int) - a).max() <= 4  # (was the Y, Cb, Cr values taken for R, G, B)
    tifffile.imwrite(tmp_path / "jpeg.tif", a, photometric="rgb", compression="jpeg")  # stored as JPEG YCbCr
    assert np.abs(_silent_read(tmp_path / "jpeg.tif").astype(int) - a).max() <= 12


def test_cielab_tiff_is_refused_with_the_fix(tmp_path):
    Image.fromarray(_smooth()).convert("LAB").save(tmp_path / "lab.tif")
    with pytest.raises(ImageReadError, match=r"lab\.tif: TIFF of CIELAB pixels .*export it as an 8-bit RGB TIFF"):
        read_rgb(tmp_path / "lab.tif")


def test_a_palette_tiff_without_a_colour_map_is_indices_as_a_mask_and_refused_as_an_image(tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[2:4] = 1
    tifffile.imwrite(tmp_path / "p.tif", a, photometric="palette")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.tif"), a)
    with pytest.raises(ImageReadError, match="palette TIFF without a colour map"):
        read_rgb(tmp_path / "p.tif")
