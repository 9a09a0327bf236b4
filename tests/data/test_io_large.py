"""Images too large to read whole: refused before decoding (with the size and the fix), one warning below that."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histowsss.data.io import (ImageReadError, LargeImageWarning, image_pixel_limits, image_size, read_mask,
                               read_rgb)

tifffile = pytest.importorskip("tifffile")


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG whose header says w x h (its pixel data a few bytes: only the header is ever looked at)."""

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _strip_tiff_claiming(path: Path, w: int, h: int) -> None:
    """A small strip (not tiled) TIFF whose ImageWidth / ImageLength tags are rewritten to w x h."""
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        spots = [(tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength")]
    data = bytearray(path.read_bytes())
    for (offset, dtype), value in zip(spots, (w, h)):
        fmt = "<H" if int(dtype) == 3 else "<I"  # SHORT or LONG
        data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))


def _assert_too_large(e: pytest.ExceptionInfo, path: Path, size: str) -> None:
    msg = str(e.value)
    assert msg.startswith(f"{path}: image of {size} pixels")
    assert "too large to read whole" in msg and "179 Mpx" in msg  # the limit, twice Pillow's MAX_IMAGE_PIXELS
    assert "histowsss data tiles" in msg and "pyramidal" in msg and "downscale" in msg
    assert "corrupt" not in msg and "re-download" not in msg


def test_limits_are_pillows():
    assert image_pixel_limits() == (Image.MAX_IMAGE_PIXELS, 2 * Image.MAX_IMAGE_PIXELS)


def test_a_huge_png_is_too_large_not_corrupt(tmp_path):
    p = tmp_path / "huge.png"
    _png_header_only(p, 100000, 100000)
    with pytest.raises(ImageReadError) as e:
        read_rgb(p)
    _assert_too_large(e, p, "100000x100000")
    with pytest.raises(ImageReadError, match="too large to read whole"):
        read_mask(p)
    assert image_size(p) == (100000, 100000)  # the size is still said (crop planning, init)


def test_a_huge_strip_tiff_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    p = tmp_path / "huge.tif"
    _strip_tiff_claiming(p, 60000, 60000)

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded (a 10 GiB allocation) before the size was checked")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", must_not_decode)
    with pytest.raises(ImageReadError) as e:
        read_rgb(p)
    _assert_too_large(e, p, "60000x60000")
    with pytest.raises(ImageReadError, match="60000x60000 pixels.*too large"):
        read_mask(p)


def test_an_image_over_pillows_limit_reads_with_one_warning_of_ours(tmp_path, monkeypatch, recwarn):
    """Over Image.MAX_IMAGE_PIXELS (lowered here to 1000 px): read, with one warning naming the file and its size,
    and none of Pillow's DecompressionBombWarnings; over twice it: refused. PNG, JPEG and TIFF alike."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    a = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)  # 1200 px
    Image.fromarray(a).save(tmp_path / "big.png")
    Image.fromarray(a).save(tmp_path / "big.jpg")
    tifffile.imwrite(tmp_path / "big.tif", a, photometric="rgb")
    for name in ("big.png", "big.jpg", "big.tif"):
        warnings.simplefilter("always")
        recwarn.clear()
        assert read_rgb(tmp_path / name).shape == (30, 40, 3)
        caught = [w for w in recwarn.list if issubclass(w.category, Warning)]
        assert [w.category for w in caught] == [LargeImageWarning], [str(w.message) for w in caught]
        msg = str(caught[0].message)
        assert msg.startswith(f"{tmp_path / name}: large image, 40x30 pixels") and "histowsss data tiles" in msg
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "mask.png")
    recwarn.clear()
    assert read_mask(tmp_path / "mask.png").shape == (30, 40) and not recwarn.list  # its image warns, not the mask
    big = np.zeros((50, 50, 3), np.uint8)  # 2500 px > 2 x 1000
    Image.fromarray(big).save(tmp_path / "over.png")
    tifffile.imwrite(tmp_path / "over.tif", big, photometric="rgb")
    for name in ("over.png", "over.tif"):
        with pytest.raises(ImageReadError, match=r"image of 50x50 pixels .*too large to read whole"):
            read_rgb(tmp_path / name)


def test_pillows_limit_switched_off_switches_ours_off(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert image_pixel_limits() == (None, None)
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_rgb(tmp_path / "a.png").shape == (50, 50, 3)


def test_pillows_own_refusal_is_said_as_too_large(tmp_path, monkeypatch):
    """Where the size could not be read first, Pillow's DecompressionBombError still reads as 'too large'."""
    import histowsss.data.io as io

    monkeypatch.setattr(io, "_pillow_header", lambda path: None)
    p = tmp_path / "huge.png"
    _png_header_only(p, 100000, 100000)
    with pytest.raises(ImageReadError, match=r"huge\.png: image of 10000000000 pixels is too large to read whole"):
        read_rgb(p)


def test_an_ordinary_large_image_reads_silently(tmp_path):
    """A GlaS-sized image (775 x 522) is far from any limit."""
    Image.fromarray(np.zeros((522, 775, 3), np.uint8)).save(tmp_path / "glas.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_rgb(tmp_path / "glas.png").shape == (522, 775, 3)
