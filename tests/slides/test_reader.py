"""Opening slides with openslide / tiffslide: metadata, reads outside the slide, resampling, clear errors."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histowsss.slides.reader import SlideError, is_slide_file, open_slide
from tests.conftest import tissue_slide_rgb


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_both_backends_read_the_same_pixels_and_mpp(slide_file: Path, backend: str):
    pytest.importorskip(backend)
    rgb = tissue_slide_rgb()
    with open_slide(slide_file, backend) as s:
        assert s.backend == backend
        assert s.dimensions == (420, 300) and s.mpp == pytest.approx(0.5)
        assert s.level_downsamples[:2] == pytest.approx((1.0, 2.0))
        np.testing.assert_array_equal(s.read(10, 20, 50, 40, (50, 40)), rgb[20:60, 10:60])


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_outside_the_slide_is_white(slide_file: Path, backend: str):
    pytest.importorskip(backend)
    with open_slide(slide_file, backend) as s:
        r = s.read(400, 290, 40, 20, (40, 20))  # 20 x 10 inside, the rest outside
        np.testing.assert_array_equal(r[:10, :20], tissue_slide_rgb()[290:300, 400:420])
        assert (r[10:] == 255).all() and (r[:, 20:] == 255).all()
        assert (s.read(-100, -100, 50, 50, (10, 10)) == 255).all()


def test_downsampled_reads_use_a_pyramid_level(slide_file: Path):
    with open_slide(slide_file) as s:
        assert s.best_level(2.0) == 1 and s.best_level(1.9) == 0 and s.best_level(100) == len(s.level_downsamples) - 1
        r = s.read(0, 0, 420, 300, (105, 75))  # downsample 4
        ref = np.asarray(Image.fromarray(tissue_slide_rgb()).resize((105, 75), Image.BILINEAR))
        assert r.shape == (75, 105, 3)
        assert np.abs(r.astype(int) - ref).mean() < 12  # same picture, other resampling path
        thumb, ds = s.thumbnail(100)
        assert max(thumb.shape[:2]) == 100 and ds == pytest.approx(4.2)


def test_mpp_is_none_without_metadata(tmp_path: Path, make_slide):
    path = make_slide(tmp_path / "nompp.tif", tissue_slide_rgb(), mpp=None)
    with open_slide(path) as s:
        assert s.mpp is None


def test_slide_file_detection(tmp_path: Path, slide_file: Path):
    plain = tmp_path / "plain.tif"
    Image.fromarray(tissue_slide_rgb()).save(plain)  # strip-based TIFF: an ordinary image
    png = tmp_path / "a.png"
    Image.fromarray(tissue_slide_rgb()).save(png)
    assert is_slide_file(slide_file) and not is_slide_file(plain) and not is_slide_file(png)
    assert is_slide_file(tmp_path / "x.svs")  # by suffix


def test_errors_name_the_file_and_the_fix(tmp_path: Path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.svs"):
        open_slide(tmp_path / "nope.svs")
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a slide at all")
    with pytest.raises(SlideError, match="broken.svs.*cannot be opened"):
        open_slide(bad)
    with pytest.raises(ValueError, match="unknown slide backend"):
        open_slide(bad, "bioformats")
    real_import = builtins.__import__

    def no_readers(name, *a, **k):
        if name in ("openslide", "tiffslide"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_readers)
    with pytest.raises(SlideError, match=r"broken.svs.*pip install 'histowsss\[slides\]'"):
        open_slide(bad)


def test_thumbnail_in_bands_equals_one_read(slide_file: Path):
    with open_slide(slide_file) as s:
        whole, ds = s.thumbnail(210)
        banded, ds2 = s.thumbnail(210, band_pixels=5000)  # 5000 px of level 1 (210 wide) = 23 rows a band
    assert ds == ds2 == pytest.approx(2.0) and whole.shape == banded.shape == (150, 210, 3)
    np.testing.assert_array_equal(whole, banded)


def test_banded_read_equals_one_read_and_bounds_each_request(slide_file: Path):
    """The slide overlay reads the whole slide: in bands, so a slide without a pyramid does not fill the memory."""
    with open_slide(slide_file) as s:
        whole = s.read(10, 4, 400, 290, (200, 145))
        sizes: list[tuple[int, int]] = []
        read_region = s.handle.read_region
        s.handle.read_region = lambda loc, level, size: sizes.append(size) or read_region(loc, level, size)
        banded = s.read_banded(10, 4, 400, 290, (200, 145), band_pixels=4000)
    np.testing.assert_array_equal(whole, banded)
    assert len(sizes) > 5 and max(w * h for w, h in sizes) <= 4000 + 2 * 200  # a band rounds up by a row at most


def test_a_small_tiled_single_level_tif_is_an_image(tmp_path: Path):
    """Tiles and exported regions are often written tiled: predict must read them as training read them."""
    import tifffile

    rgb = tissue_slide_rgb()
    tifffile.imwrite(tmp_path / "tiled.tif", rgb, tile=(64, 64), photometric="rgb")
    assert not is_slide_file(tmp_path / "tiled.tif")


def test_a_pyramid_in_sub_images_is_read_with_its_levels(tmp_path: Path):
    """OME-TIFF / bfconvert / QuPath exports keep the lower levels in SubIFDs, which openslide's generic TIFF reader
    does not list: auto then reads the file with tiffslide, which does."""
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("tiffslide")
    rgb = tissue_slide_rgb(256, 384)
    path = tmp_path / "sub.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        tif.write(rgb, tile=(64, 64), subifds=2, photometric="rgb", metadata={"axes": "YXS"})
        for f in (2, 4):
            tif.write(rgb[::f, ::f], tile=(64, 64), subfiletype=1, photometric="rgb")
    with open_slide(path) as s:
        assert len(s.level_downsamples) == 3 and s.level_downsamples[-1] == pytest.approx(4.0, rel=0.02)
        assert s.best_level(4.0) == 2
        np.testing.assert_array_equal(s.read(0, 0, 64, 64, (64, 64)), rgb[:64, :64])


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_reads_from_a_level_land_where_the_box_starts(tmp_path: Path, make_slide, backend: str):
    """A box whose corner is not on the level's pixel grid is placed to the sub-pixel (tiffslide floors the corner to
    the level's grid, which shifted tiles by up to a level pixel, each differently)."""
    pytest.importorskip(backend)
    img = np.full((512, 512, 3), 242, np.uint8)
    img[:, 200:] = (200, 100, 170)  # a vertical edge at level-0 x = 200
    path = make_slide(tmp_path / "edge.tif", img, mpp=0.5, levels=4, tile=64)
    with open_slide(path, backend) as s:
        for x0, ds in ((103.0, 4.0), (107.5, 2.5), (101.0, 2.0)):
            assert s.best_level(ds) > 0
            row = s.read(x0, 0, 64 * ds, 64 * ds, (64, 64))[32, :, 1].astype(float)
            edge = 64 - ((242 - row) / (242 - 100)).sum()  # sub-pixel position of the edge, output pixels
            assert edge == pytest.approx((200 - x0) / ds, abs=0.1), (x0, ds)


def test_a_damaged_tiff_slide_is_a_slide_error_not_a_traceback(tmp_path: Path):
    """A TIFF header and then garbage: tiffslide opens lazily, so the damage must be found while opening."""
    pytest.importorskip("tiffslide")
    bad = tmp_path / "damaged.svs"
    bad.write_bytes(b"II*\x00" + np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(SlideError, match="damaged.svs: cannot be opened as a whole-slide image"):
        open_slide(bad)


def test_the_pixel_size_of_an_ome_tiff_is_read_from_its_ome_xml(tmp_path: Path):
    """bfconvert / QuPath OME-TIFFs keep the pixel size in OME-XML (PhysicalSizeX/Y) and not always in the TIFF
    resolution tags, where openslide and tiffslide look."""
    from histowsss.slides.reader import ome_mpp

    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("tiffslide")
    rgb = tissue_slide_rgb(256, 384)
    path = tmp_path / "s.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(64, 64), subifds=1, photometric="rgb",
                  metadata={"axes": "YXS", "PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm",
                            "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"})
        tif.write(rgb[::2, ::2], tile=(64, 64), subfiletype=1, photometric="rgb")
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.5)
    xml = '<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image><Pixels ' \
          'PhysicalSizeX="0.25" PhysicalSizeY="0.25"/></Image></OME>'
    assert ome_mpp(xml) == pytest.approx(0.25) and ome_mpp("Aperio Image Library") is None
    assert ome_mpp('<OME><Image><Pixels SizeX="3"/></Image></OME>') is None
