"""Open whole-slide images with openslide (tiffslide as the fallback) behind one small interface.

Both libraries share the OpenSlide API (``dimensions``, ``level_downsamples``, ``read_region``, ``get_thumbnail``,
``properties``); :class:`Slide` adds what the rest of histowsss needs from it: the level-0 pixel size in microns
(``mpp``), RGB reads of any level-0 box resampled to any resolution, with the part outside the slide filled white
(openslide returns transparent pixels there, tiffslide black ones), and a thumbnail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Formats openslide reads; .tif/.tiff files are slides only when they are tiled (see is_slide_file).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".qptiff")
TIFF_SUFFIXES = (".tif", ".tiff")
INSTALL_HINT = "install the slide readers with `pip install 'histowsss[slides]'` (openslide-python, openslide-bin, tiffslide)"


class SlideError(ValueError):
    """A slide cannot be opened or used; the message names the file and the fix."""


# a tiled TIFF of one level is a slide only when larger than this on a side (smaller ones, e.g. regions exported
# from QuPath or tiles written tiled by default, are read whole as images, as training reads them); a pyramid is
# always a slide
SINGLE_LEVEL_SLIDE_SIDE = 8192


def is_slide_file(path: Path) -> bool:
    """True for whole-slide formats, for pyramidal .tif/.tiff files (OME-TIFF included), and for tiled single-level
    ones larger than ``SINGLE_LEVEL_SLIDE_SIDE`` px on a side."""
    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix not in TIFF_SUFFIXES:
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if len(tif.series[0].levels) > 1:
                return True
            return bool(page.is_tiled) and max(page.imagewidth, page.imagelength) > SINGLE_LEVEL_SLIDE_SIDE
    except Exception:  # an unreadable file is reported by the image reader with its own message
        return False


def _to_rgb(region) -> np.ndarray:
    """PIL image (RGB or RGBA) -> RGB uint8, transparent pixels composited on white."""
    arr = np.asarray(region)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 4:
        a = arr[..., 3:4]
        if a.min() < 255:  # integer compositing, rounded (an opaque read, the usual one, is only sliced): no float
            a = a.astype(np.uint16)  # copies of a band of tens of millions of pixels
            arr = ((arr[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


@dataclass
class Slide:
    """An open whole-slide image. Use as a context manager or call :meth:`close`."""

    path: Path
    handle: Any
    backend: str

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        w, h = self.handle.dimensions
        return int(w), int(h)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self.handle.level_downsamples)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self.handle.level_dimensions)

    @property
    def qupath_frame(self) -> tuple[int, int, int, int]:
        """The level-0 box (x, y, width, height) QuPath shows of this slide: its OpenSlide reader crops a slide to
        the ``openslide.bounds-*`` box when the file has one (MIRAX .mrxs, some Hamamatsu), so QuPath's (0, 0) is
        (bounds-x, bounds-y); the whole slide otherwise. Annotations exchanged with QuPath are shifted by its corner."""
        props = self.handle.properties
        keys = [f"openslide.bounds-{k}" for k in ("x", "y", "width", "height")]
        whole = (0, 0, *self.dimensions)
        if not all(props.get(k) not in (None, "") for k in keys):
            return whole
        try:
            x, y, w, h = (int(props[k]) for k in keys)
        except (TypeError, ValueError):
            return whole
        return (x, y, w, h) if w > 0 and h > 0 else whole

    @property
    def qupath_origin(self) -> tuple[int, int]:
        """Level-0 pixel where QuPath's image coordinates start: the corner of :attr:`qupath_frame`."""
        x, y, _, _ = self.qupath_frame
        return (x, y)

    @property
    def mpp(self) -> float | None:
        """Level-0 microns per pixel from the slide's metadata (mean of x and y), or None if it has none."""
        props = self.handle.properties
        vals = []
        for axis in ("x", "y"):  # openslide's key, else tiffslide's
            f = _positive(props.get(f"openslide.mpp-{axis}")) or _positive(props.get(f"tiffslide.mpp-{axis}"))
            if f is not None:
                vals.append(f)
        if vals:
            return float(np.mean(vals))
        return _positive(props.get("aperio.MPP")) or ome_mpp(props.get("tiff.ImageDescription") or "")

    def best_level(self, downsample: float) -> int:
        """The deepest level whose downsample is <= ``downsample`` (so reads are resampled down, never up)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = i
        return best

    def read(self, x0: float, y0: float, w0: float, h0: float, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (size[1], size[0], 3) of the level-0 box (x0, y0, w0, h0), resampled to ``size`` (w, h).

        Read from the level that fits the resampling best; the part of the box outside the slide is white.
        """
        from PIL import Image

        out_w, out_h = size
        W, H = self.dimensions
        downsample = max(w0 / max(out_w, 1), h0 / max(out_h, 1))
        level = self.best_level(downsample)
        ds = self.level_downsamples[level]
        canvas = np.full((out_h, out_w, 3), 255, np.uint8)
        # the part of the box inside the slide, in level-0 pixels
        ix0, iy0 = max(0.0, x0), max(0.0, y0)
        ix1, iy1 = min(float(W), x0 + w0), min(float(H), y0 + h0)
        if ix1 <= ix0 or iy1 <= iy0:
            return canvas
        level_w, level_h = self.level_dimensions[level]
        # whole pixels of the level read, from the one holding the box's corner; asked for at a level-0 point inside
        # that pixel, so a reader that floors to the level's grid (tiffslide) and one that places the point exactly
        # (openslide) both start there (up to a level-0 pixel)
        lx0, ly0 = min(int(ix0 // ds), level_w - 1), min(int(iy0 // ds), level_h - 1)
        lw = max(1, min(int(math.ceil(ix1 / ds)), level_w) - lx0)
        lh = max(1, min(int(math.ceil(iy1 / ds)), level_h) - ly0)
        at = (min(int(math.ceil(lx0 * ds - 1e-6)), W - 1), min(int(math.ceil(ly0 * ds - 1e-6)), H - 1))
        try:
            region = self.handle.read_region(at, level, (lw, lh))
        except Exception as e:  # corrupt tile data, truncated file
            raise SlideError(f"{self.path}: reading level {level} at {at} failed ({e}); the "
                             "slide file may be truncated or corrupt: re-export or re-copy it") from e
        rgb = _to_rgb(region)
        # the level-0 point the region starts at: the level's pixel grid for tiffslide, the point asked for otherwise
        rx0, ry0 = (lx0 * ds, ly0 * ds) if self.backend == "tiffslide" else (float(at[0]), float(at[1]))
        # where the inside part lands in the output grid
        sx, sy = out_w / w0, out_h / h0
        ox0, oy0 = int(round((ix0 - x0) * sx)), int(round((iy0 - y0) * sy))
        ox1, oy1 = int(round((ix1 - x0) * sx)), int(round((iy1 - y0) * sy))
        ow, oh = max(1, min(out_w, ox1) - ox0), max(1, min(out_h, oy1) - oy0)
        # the inside part in the region's pixels (fractional), resampled to the output cells it covers
        box = ((ix0 - rx0) / ds, (iy0 - ry0) / ds, (ix1 - rx0) / ds, (iy1 - ry0) / ds)
        box = (max(0.0, box[0]), max(0.0, box[1]), min(float(lw), box[2]), min(float(lh), box[3]))
        if box != (0.0, 0.0, float(rgb.shape[1]), float(rgb.shape[0])) or rgb.shape[1] != ow or rgb.shape[0] != oh:
            rgb = np.asarray(Image.fromarray(rgb).resize((ow, oh), Image.LANCZOS if ow < box[2] - box[0] else
                                                        Image.BILINEAR, box=box))
        canvas[oy0 : oy0 + oh, ox0 : ox0 + ow] = rgb[: out_h - oy0, : out_w - ox0]
        return canvas

    def read_banded(self, x0: float, y0: float, w0: float, h0: float, size: tuple[int, int],
                    band_pixels: int = 32_000_000) -> np.ndarray:
        """As :meth:`read`, in horizontal bands of at most ``band_pixels`` source pixels each, so a large box of a
        slide without a pyramid (one huge level) is read in bounded memory."""
        out_w, out_h = size
        level = self.best_level(max(w0 / max(out_w, 1), h0 / max(out_h, 1)))
        ds = self.level_downsamples[level]
        rows_per_px = (h0 / max(out_h, 1)) / ds  # source rows (at the level read) per output row
        band = max(1, int(band_pixels // max(w0 / ds, 1) / max(rows_per_px, 1e-9)))
        parts = [self.read(x0, y0 + o0 * h0 / out_h, w0, (min(out_h, o0 + band) - o0) * h0 / out_h,
                           (out_w, min(out_h, o0 + band) - o0)) for o0 in range(0, out_h, band)]
        return np.concatenate(parts, axis=0)

    def thumbnail(self, max_size: int = 2048, band_pixels: int = 32_000_000) -> tuple[np.ndarray, float]:
        """RGB thumbnail whose longest side is at most ``max_size``, and its downsample (level-0 px per px);
        read in bands (:meth:`read_banded`)."""
        W, H = self.dimensions
        f = max(W, H) / max_size
        tw, th = (W, H) if f <= 1 else (max(1, int(round(W / f))), max(1, int(round(H / f))))
        return self.read_banded(0, 0, W, H, (tw, th), band_pixels), W / tw

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _positive(value) -> float | None:
    """``value`` as a positive finite float, or None."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f > 0 and math.isfinite(f) else None


# OME's length units in microns (PhysicalSizeXUnit; the default is µm)
_OME_UNITS = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


def ome_mpp(description: str) -> float | None:
    """Microns per pixel of the first image's ``Pixels`` in an OME-XML image description (``PhysicalSizeX`` / ``Y``
    with their units; the mean of the two), or None: OME-TIFFs (bfconvert, QuPath) keep the pixel size there,
    where neither openslide nor tiffslide reads it when the TIFF resolution tags lack it."""
    if "<OME" not in description[:2000]:
        return None
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(description.encode("utf-8") if description.startswith("<?xml") else description)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    vals = []
    for axis in ("X", "Y"):
        size = _positive(pixels.get(f"PhysicalSize{axis}"))
        unit = _OME_UNITS.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if size is not None and unit is not None:
            vals.append(size * unit)
    return float(np.mean(vals)) if vals else None


def _deeper_pyramid(slide: Slide) -> Slide:
    """``slide`` (opened by openslide), or the same TIFF opened by tiffslide when tiffslide finds more pyramid
    levels: openslide's generic TIFF reader does not see levels stored as sub-images (SubIFDs: OME-TIFF, bfconvert
    and QuPath exports) and would decode level 0 for every downsampled read."""
    try:
        import tiffslide

        other = Slide(slide.path, tiffslide.TiffSlide(str(slide.path)), "tiffslide")
        deeper = len(other.level_downsamples) > len(slide.level_downsamples)
    except Exception:
        return slide
    if deeper:
        slide.close()
        return other
    other.close()
    return slide


def open_slide(path: Path | str, backend: str = "auto") -> Slide:
    """Open a slide with openslide, or tiffslide when openslide is missing or refuses the file.

    ``backend``: ``auto``, ``openslide`` or ``tiffslide``. Errors name the file and what to do.
    """
    path = Path(path)
    if backend not in ("auto", "openslide", "tiffslide"):
        raise ValueError(f"unknown slide backend {backend!r}; choose auto, openslide or tiffslide")
    if not path.exists():
        raise FileNotFoundError(f"{path}: slide not found; check the path")
    tried: list[str] = []
    if backend in ("auto", "openslide"):
        try:
            import openslide

            slide = Slide(path, openslide.OpenSlide(str(path)), "openslide")
            if backend == "auto" and path.suffix.lower() in TIFF_SUFFIXES:
                return _deeper_pyramid(slide)
            return slide
        except ImportError as e:
            tried.append(f"openslide not importable ({e})")
        except Exception as e:  # OpenSlideUnsupportedFormatError, OpenSlideError
            tried.append(f"openslide: {type(e).__name__}: {e}")
    if backend in ("auto", "tiffslide"):
        try:
            import tiffslide

            from histowsss.data.io import quiet_tifffile

            with quiet_tifffile():  # (a damaged file's tag complaints: the SlideError below says it once)
                handle = tiffslide.TiffSlide(str(path))
                try:  # tiffslide opens lazily: a damaged file fails here, as a SlideError below, not at a read
                    slide = Slide(path, handle, "tiffslide")
                    _ = slide.dimensions, slide.level_downsamples, slide.handle.properties
                except Exception:
                    handle.close()
                    raise
            return slide
        except ImportError as e:
            tried.append(f"tiffslide not importable ({e})")
        except Exception as e:
            tried.append(f"tiffslide: {type(e).__name__}: {e}")
    if all("not importable" in t for t in tried):
        raise SlideError(f"{path}: no slide reader available; {INSTALL_HINT}")
    raise SlideError(f"{path}: cannot be opened as a whole-slide image ({'; '.join(tried)}); check that the file "
                     "is complete (for .mrxs the folder of the same name must sit beside it) and in a format "
                     "openslide supports")
