"""Image and mask reading: explicit conversions, and clear refusals that name the file and the fix."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histowsss.data.io import ImageReadError, image_size, read_mask, read_rgb, resize


def _png16(path: Path, a: np.ndarray) -> None:
    """Write a 16-bit RGB(A) PNG by hand (Pillow cannot write one)."""
    h, w, c = a.shape
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_rgb_png_roundtrip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    out = read_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (7, 11, 3)
    np.testing.assert_array_equal(out, a)
    assert image_size(tmp_path / "a.png") == (7, 11)


def test_missing_image_names_file_and_fix(tmp_path):
    p = tmp_path / "nope.png"
    with pytest.raises(ImageReadError) as e:
        read_rgb(p)
    msg = str(e.value)
    assert str(p) in msg and "not found" in msg and "manifest" in msg
    with pytest.raises(ImageReadError, match="not found"):
        image_size(p)
    with pytest.raises(ImageReadError, match="not found"):
        read_mask(p)


def test_corrupt_image_names_file_and_fix(tmp_path):
    p = tmp_path / "corrupt.png"
    p.write_bytes(np.random.default_rng(1).bytes(300))
    with pytest.raises(ImageReadError) as e:
        read_rgb(p)
    msg = str(e.value)
    assert str(p) in msg
    rest = msg.replace(str(p), "")
    assert "corrupt" in rest and "re-export" in rest
    assert "pip install" not in msg  # no misleading backend advice from the decoder library
    with pytest.raises(ImageReadError, match="corrupt"):
        image_size(p)


def test_truncated_png_is_corrupt(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"t\.png.*corrupt"):
        read_rgb(tmp_path / "t.png")


@pytest.mark.parametrize("mode", ["L", "LA", "I;16"])
def test_grayscale_refused(tmp_path, mode):
    p = tmp_path / "g.png"
    if mode == "LA":
        Image.fromarray(np.full((5, 6, 2), 100, np.uint8), "LA").save(p)
    elif mode == "I;16":
        Image.fromarray(np.full((5, 6), 1000, np.uint16)).save(p)
    else:
        Image.fromarray(np.full((5, 6), 100, np.uint8)).save(p)
    with pytest.raises(ImageReadError) as e:
        read_rgb(p)
    msg = str(e.value)
    assert str(p) in msg
    rest = msg.replace(str(p), "")  # (the tmp folder name contains the test's name)
    assert "grayscale" in rest and "RGB" in rest


def test_rgba_opaque_converted_silently(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(np.dstack([a, np.full((6, 8), 255, np.uint8)]), "RGBA").save(tmp_path / "o.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_rgb(tmp_path / "o.png")
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, a)


def test_rgba_transparent_warns_and_composites_on_white(tmp_path):
    a = np.full((4, 4, 4), 0, np.uint8)
    a[..., 3] = 255
    a[0, 0, 3] = 0  # fully transparent black pixel -> white
    a[0, 1, 3] = 128  # half transparent black -> mid grey
    p = tmp_path / "t.png"
    Image.fromarray(a, "RGBA").save(p)
    with pytest.warns(UserWarning, match=r"t\.png.*transparen"):
        out = read_rgb(p)
    assert out.shape == (4, 4, 3)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert abs(int(out[0, 1, 0]) - 127) <= 1
    assert out[1, 1].tolist() == [0, 0, 0]
    a[..., 3] = 0  # transparent everywhere: a blank image, refused
    Image.fromarray(a, "RGBA").save(p)
    with pytest.raises(ImageReadError, match=r"t\.png: RGBA image that is transparent everywhere"):
        read_rgb(p)


def test_16bit_tif_converted_to_8bit(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    k = np.arange(0, 256, dtype=np.uint16)
    a = np.stack([k * 257, k * 257, np.full_like(k, 65535)], axis=-1).reshape(16, 16, 3).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a16.tif", a, photometric="rgb")
    out = read_rgb(tmp_path / "a16.tif")
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[..., 0].ravel(), np.arange(256))  # 257*k -> k exactly
    assert (out[..., 2] == 255).all()
    # intermediate values are rounded to the nearest 8-bit level
    b = np.array([[[128, 129, 385]]], np.uint16)
    tifffile.imwrite(tmp_path / "b16.tif", b, photometric="rgb")
    with pytest.warns(UserWarning, match="stop at 385"):
        assert read_rgb(tmp_path / "b16.tif").tolist() == [[[0, 1, 1]]]


def test_12bit_data_in_a_16bit_tif_is_named(tmp_path):
    """Camera data of 12 bits in a 16-bit file reads almost black: said, with the fix, not silently darkened."""
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(0).integers(0, 4096, (8, 8, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c12.tif", a, photometric="rgb")
    with pytest.warns(UserWarning, match=r"c12\.tif: 16-bit image whose values stop at \d+ \(10- or 12-bit"):
        assert read_rgb(tmp_path / "c12.tif").max() <= 16


def test_16bit_png_converted_to_8bit(tmp_path):
    k = np.arange(0, 256, dtype=np.uint16)
    a = np.stack([k * 257, (255 - k) * 257, np.full_like(k, 65535)], axis=-1).reshape(16, 16, 3)
    _png16(tmp_path / "a16.png", a)
    out = read_rgb(tmp_path / "a16.png")
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[..., 0].ravel(), np.arange(256))
    np.testing.assert_array_equal(out[..., 1].ravel(), 255 - np.arange(256))
    assert (out[..., 2] == 255).all()
    # arbitrary 16-bit values land within one level of v / 257
    rnd = np.random.default_rng(0).integers(0, 65536, (5, 7, 3)).astype(np.uint16)
    _png16(tmp_path / "r16.png", rnd)
    got = read_rgb(tmp_path / "r16.png").astype(int)
    assert np.abs(got - rnd / 257.0).max() <= 1.0


def test_16bit_rgba_png(tmp_path):
    a = np.zeros((3, 3, 4), np.uint16)
    a[..., 0] = 65535
    a[..., 3] = 65535
    _png16(tmp_path / "a.png", a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_rgb(tmp_path / "a.png")
    assert out.tolist() == [[[255, 0, 0]] * 3] * 3


def test_float_tif_in_unit_range(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = np.full((2, 2, 3), 0.5, np.float32)
    tifffile.imwrite(tmp_path / "f.tif", a, photometric="rgb")
    assert read_rgb(tmp_path / "f.tif").ravel().tolist() == [128] * 12


def test_read_rgb_scale(tmp_path):
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "a.png")
    assert read_rgb(tmp_path / "a.png", scale=0.5).shape == (5, 10, 3)


def test_mask_size_mismatch_names_both_sizes(tmp_path):
    p = tmp_path / "m.png"
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(p)
    assert read_mask(p, expected_hw=(10, 20)).shape == (10, 20)
    with pytest.raises(ImageReadError) as e:
        read_mask(p, expected_hw=(12, 20))
    msg = str(e.value)
    assert str(p) in msg and "20x10" in msg and "20x12" in msg and "re-export" in msg


def test_mask_grey_rgb_accepted_colour_refused(tmp_path):
    g = np.zeros((4, 4, 3), np.uint8)
    g[1:3, 1:3] = 255
    Image.fromarray(g).save(tmp_path / "g.png")
    m = read_mask(tmp_path / "g.png")
    assert m.shape == (4, 4) and set(np.unique(m).tolist()) == {0, 255}
    c = g.copy()
    c[0, 0] = (255, 0, 0)
    Image.fromarray(c).save(tmp_path / "c.png")
    with pytest.raises(ImageReadError, match=r"c\.png.*colour mask"):
        read_mask(tmp_path / "c.png")


def test_mask_16bit_ids_kept(tmp_path):
    m = np.array([[0, 1], [300, 65535]], np.uint16)
    Image.fromarray(m).save(tmp_path / "cc.png")
    out = read_mask(tmp_path / "cc.png")
    assert out.tolist() == m.astype(np.int64).tolist()
    assert read_mask(tmp_path / "cc.png", scale=2.0).shape == (4, 4)


def test_resize_nearest_keeps_labels():
    m = np.array([[0, 1], [2, 255]], np.uint8)
    out = resize(m, 2.0, nearest=True)
    assert out.shape == (4, 4) and set(np.unique(out).tolist()) == {0, 1, 2, 255}
    big = np.array([[0, 70000]], np.int64)
    assert set(np.unique(resize(big, 3.0, nearest=True)).tolist()) == {0, 70000}


def test_palette_mask_gives_its_indices_and_a_palette_image_its_colours(tmp_path):
    """LUAD-HistoSeg / BCSS-WSSS store masks as palette PNGs: the indices are the class ids."""
    ids = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    im = Image.fromarray(ids, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 255] + [0] * (256 - 3) * 3)
    im.save(tmp_path / "pal.png")
    assert read_mask(tmp_path / "pal.png").tolist() == ids.tolist()
    with pytest.raises(ImageReadError, match=r"^\S*pal\.png: palette image of 3 colour\(s\): a label mask, it seems"):
        read_rgb(tmp_path / "pal.png")  # as an image: a mask taken for one (predict on a folder of masks)
    from histowsss.data.io import pack_rgb

    colours = {int(pack_rgb(np.array([[c]], np.uint8))[0, 0]): k for k, c in
               enumerate(((0, 0, 0), (255, 0, 0), (0, 128, 255)))}
    assert read_mask(tmp_path / "pal.png", colors=colours).tolist() == ids.tolist()  # a colour mask, palette-stored
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), np.uint8)
    Image.fromarray(rgb).quantize(64).save(tmp_path / "pal_image.png")  # an image saved with a palette
    assert read_rgb(tmp_path / "pal_image.png").shape == (24, 32, 3)  # as an image: its colours


def test_cmyk_jpeg_is_converted_not_taken_for_rgba(tmp_path):
    Image.new("RGB", (8, 6), (200, 100, 150)).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    rgb = read_rgb(tmp_path / "c.jpg")
    assert rgb.shape == (6, 8, 3) and np.abs(rgb[3, 4].astype(int) - (200, 100, 150)).max() < 12


def test_exif_orientation_is_applied_to_the_pixels_and_the_size(tmp_path):
    """A photo stored 8 x 4 but tagged 'rotate 90' is shown 4 wide, 8 high: masks drawn on it have that size."""
    a = np.zeros((4, 8, 3), np.uint8)
    a[0, 0] = (255, 0, 0)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "r.png", exif=exif.tobytes())
    rgb = read_rgb(tmp_path / "r.png")
    assert rgb.shape == (8, 4, 3) and image_size(tmp_path / "r.png") == (8, 4)
    assert rgb[0, 3].tolist() == [255, 0, 0]  # orientation 6: the top-left corner goes to the top right


def test_planar_rgb_tif_reads_samples_last(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(a, -1, 0), photometric="rgb", planarconfig="separate")
    assert np.array_equal(read_rgb(tmp_path / "planar.tif"), a)


def test_compressed_tif_without_imagecodecs_falls_back_to_pillow(tmp_path, monkeypatch):
    """LZW / JPEG TIFFs need imagecodecs in tifffile (an optional package): Pillow reads them instead, and when
    neither can, the message says which package is missing rather than calling the file corrupt."""
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "lzw.tif", compression="tiff_lzw")

    def no_codecs(*args, **kwargs):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_codecs)
    assert np.array_equal(read_rgb(tmp_path / "lzw.tif"), a)
    import PIL.Image

    def no_pillow(*args, **kwargs):
        raise OSError("decoder tiff_lzw not available")

    monkeypatch.setattr(PIL.Image, "open", no_pillow)
    with pytest.raises(ImageReadError, match=r"lzw\.tif: its TIFF compression needs the imagecodecs package"):
        read_rgb(tmp_path / "lzw.tif")


def test_ome_channel_first_tif_reads_samples_last(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "cyx.ome.tif", np.moveaxis(a, -1, 0), metadata={"axes": "CYX"})
    assert np.array_equal(read_rgb(tmp_path / "cyx.ome.tif"), a)


def test_a_mask_turned_by_90_degrees_says_why(tmp_path):
    """A mask the size of its image turned (an EXIF-rotated photo whose mask was drawn on the stored pixels)."""
    p = tmp_path / "m.png"
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(p)
    with pytest.raises(ImageReadError, match="turned by 90 degrees.*EXIF orientation"):
        read_mask(p, expected_hw=(20, 30))
    with pytest.raises(ImageReadError, match="belongs to another image"):
        read_mask(p, expected_hw=(20, 31))


def test_image_stem_drops_a_two_part_ome_suffix():
    from histowsss.data.io import image_stem

    assert image_stem("d/a.png") == "a" and image_stem("a.b.png") == "a.b"
    assert image_stem("slides/s1.ome.tif") == "s1" and image_stem("S1.OME.TIFF") == "S1"
    assert image_stem(".ome.tif") == ".ome"  # nothing before the suffix: the plain rule


def test_a_truncated_tif_is_one_clear_error_without_decoder_noise(tmp_path, capfd, caplog):
    """A copy cut short: the error names the file; tifffile's tag errors, Pillow's warnings and libtiff's
    stderr lines are not printed around it."""
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "full.tif", a, photometric="rgb", compression="zlib")
    data = (tmp_path / "full.tif").read_bytes()
    for i, cut in enumerate((len(data) // 2, 300)):
        (tmp_path / f"cut{i}.tif").write_bytes(data[:cut])
        with pytest.raises(ImageReadError, match=rf"cut{i}\.tif: cannot be decoded as an image.*truncated"):
            read_rgb(tmp_path / f"cut{i}.tif")
    err = capfd.readouterr().err
    assert "TIFF" not in err and "Truncated" not in err, err
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]


def test_a_png_or_jpeg_saved_under_a_tif_name_still_reads(tmp_path):
    a = np.random.default_rng(3).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "png.tif", format="PNG")
    Image.fromarray(a).save(tmp_path / "jpeg.tif", format="JPEG", quality=95)
    assert np.array_equal(read_rgb(tmp_path / "png.tif"), a)
    assert read_rgb(tmp_path / "jpeg.tif").shape == (20, 30, 3)


def test_12bit_data_in_a_16bit_png_is_named(tmp_path):
    """The PNG reader keeps each 16-bit value's high byte: 12-bit data reads almost black, and is warned about."""
    a = np.random.default_rng(0).integers(0, 4096, (8, 8, 3)).astype(np.uint16)
    _png16(tmp_path / "a12.png", a)
    with pytest.warns(UserWarning, match="16-bit PNG whose values stop under 4096"):
        out = read_rgb(tmp_path / "a12.png")
    assert out.max() <= 15


def test_a_mask_drawn_in_its_alpha_channel_is_refused(tmp_path):
    m = np.zeros((8, 8, 4), np.uint8)
    m[2:6, 2:6, 3] = 255  # black strokes on a transparent layer
    Image.fromarray(m, "RGBA").save(tmp_path / "m.png")
    with pytest.raises(ImageReadError, match="drawn in its alpha"):
        read_mask(tmp_path / "m.png")
    m[..., 3] = 255  # opaque: the grey values are the mask
    m[2:6, 2:6, :3] = 1
    Image.fromarray(m, "RGBA").save(tmp_path / "o.png")
    assert read_mask(tmp_path / "o.png").tolist() == (m[..., 0]).tolist()
