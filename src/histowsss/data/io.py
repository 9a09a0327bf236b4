"""Reading images and masks, with clear errors and explicit conversions."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")  # the file types read as plain images
_COMPOUND_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.tf2", ".ome.tf8", ".ome.btf")  # OME-TIFF: one suffix in two parts


def image_stem(path: str | Path) -> str:
    """An image's name without its file type: `a.png` -> `a`, and `a.ome.tif` -> `a` (not `a.ome`)."""
    name = Path(path).name
    low = name.lower()
    for suf in _COMPOUND_SUFFIXES:
        if low.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return Path(name).stem


class ImageReadError(ValueError):
    """An image or mask file cannot be used; the message names the file and the fix."""


def _not_found(path: Path) -> ImageReadError:
    return ImageReadError(f"{path}: file not found; fix the path in the manifest or restore the file")


def _corrupt(path: Path, e: BaseException) -> ImageReadError:
    # decoder messages differ per library; keep only their first line (imageio appends "pip install" advice
    # about optional backends, which is not the fix for a broken file)
    cause = (str(e).strip().splitlines() or [""])[0][:200]
    if type(e).__name__ == "DecompressionBombError":  # over Pillow's limit, its size not read beforehand
        import re

        found = re.search(r"\((\d+) pixels\)", cause)
        return _too_large(path, None, int(found.group(1)) if found else None)
    return ImageReadError(
        f"{path}: cannot be decoded as an image ({type(e).__name__}: {cause}); the file is corrupt, truncated or "
        "not an image: re-export or re-download it (or leave it out: its manifest row, or the inputs given)"
    )


class LargeImageWarning(UserWarning):
    """An image large enough to need much memory read whole; over :func:`image_pixel_limits` it is refused."""


def image_pixel_limits() -> tuple[int | None, int | None]:
    """(warn above, refuse above): the pixels (width x height) of an image read whole, any format, TIFF included.

    Pillow's own limit, ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485 px by default, about 9,460 x 9,460), and twice
    that (178,956,970 px, about 13,380 x 13,380: 0.5 GB as 8-bit RGB, several times that while a step works on it).
    Larger images are refused before a pixel is decoded; whole-slide images are read in tiles instead
    (docs/slides.md). ``(None, None)`` when Pillow's limit is switched off (``MAX_IMAGE_PIXELS = None``)."""
    from PIL import Image

    warn = Image.MAX_IMAGE_PIXELS
    return (None, None) if warn is None else (int(warn), 2 * int(warn))


_TILE_IT = ("cut it into tiles instead: save it as a pyramidal (tiled) TIFF (e.g. `vips tiffsave IMAGE OUT.tif "
            "--tile --pyramid`, or QuPath's OME-TIFF export), which `histowsss data tiles` (`--downsample` where the "
            "file has no pixel size for `--mpp`) and `histowsss predict` read as a slide (docs/slides.md), or "
            "downscale it")


def _mpx(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} Mpx"


def _too_large(path: Path, wh: tuple[int, int] | None, pixels: int | None = None) -> ImageReadError:
    """The refusal of an image over the limit of :func:`image_pixel_limits` (its size as ``wh`` or ``pixels``)."""
    limit = image_pixel_limits()[1]
    size = (f"{wh[0]}x{wh[1]} pixels ({_mpx(wh[0] * wh[1])})" if wh is not None
            else f"{pixels} pixels" if pixels is not None else "more pixels than the limit")
    return ImageReadError(f"{path}: image of {size} is too large to read whole (the limit is "
                          f"{_mpx(limit or 0)}: twice PIL.Image.MAX_IMAGE_PIXELS); {_TILE_IT}")


def _check_pixels(path: Path, w: int, h: int, warn_large: bool = True) -> None:
    """Refuse an image over the pixel limit (before decoding it); warn once for one over the warning limit (with
    ``warn_large``: images, not their one-channel masks)."""
    warn, limit = image_pixel_limits()
    if limit is not None and w * h > limit:
        raise _too_large(path, (w, h))
    if warn_large and warn is not None and w * h > warn:
        warnings.warn(f"{path}: large image, {w}x{h} pixels ({_mpx(w * h)}, {w * h * 3 / 2**30:.1f} GiB as 8-bit "
                      f"RGB), read whole; images over {_mpx(limit or 0)} are refused (limit: twice "
                      f"PIL.Image.MAX_IMAGE_PIXELS). To use less memory, {_TILE_IT}", LargeImageWarning, stacklevel=4)


def _pillow_header(path: Path) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) from the file's header without decoding the pixels and without Pillow's
    size check (a file over its limit is opened by the plugin of its file type); None when Pillow cannot open it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size[0], im.size[1], _orientation(im)
    except Image.DecompressionBombError:
        pass
    except Exception:
        return None
    Image.init()
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt not in Image.OPEN:
        return None
    try:
        with open(path, "rb") as fp, Image.OPEN[fmt][0](fp, str(path)) as im:
            return im.size[0], im.size[1], _orientation(im)
    except Exception:
        return None


PALETTE_MASK_COLOURS = 16  # a palette image using this few colours is read as a mask, refused as an image

# Pillow modes whose channels are not R, G, B (a CMYK image would pass for RGBA)
_TO_RGB_MODES = ("CMYK", "YCbCr", "LAB", "HSV")
_EXIF_ORIENTATION = 0x0112


def _orientation(im) -> int:
    """The EXIF orientation of an opened image (1: as stored), read without decoding its pixels: Pillow's
    ``getexif`` decodes a whole PNG to look for an eXIf chunk after the image data, so a PNG's is read only from the
    chunk before it (where the PNG specification puts it), else 1."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a damaged EXIF block: read the pixels as stored
        return 1


def png_bit_depth(path: Path | str) -> int | None:
    """The bit depth a PNG's header gives (8, 16, ...); None for other files."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return None
    return head[24] if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" else None


def file_orientation(path: Path | str) -> int:
    """The EXIF orientation the reader applies to a file (1: read as stored; TIFF orientation tags are not applied,
    so 1 for TIFFs), without decoding its pixels; 1 for a file that cannot be opened."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return 1
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # (its reader says so)
            with Image.open(path) as im:
                return _orientation(im)
    except Exception:  # (unreadable: its reader says so)
        return 1


def _read_pillow(path: Path, keep_palette: bool) -> np.ndarray | None:
    """Pixels of a Pillow file that needs more than a plain decode: EXIF orientation (as viewers and annotation tools
    show it), CMYK / YCbCr / LAB / HSV converted to RGB, palette indices kept (``keep_palette``: masks). None: decode
    it plainly."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        palette = im.mode in ("P", "PA")  # (masks: the indices; images: the colours, unless a mask it seems)
        if not (im.mode in _TO_RGB_MODES or palette or _orientation(im) not in (0, 1)):
            return None
        im.load()
        out = ImageOps.exif_transpose(im)
    if out.mode in _TO_RGB_MODES:
        out = out.convert("RGB")
    if out.mode in ("P", "PA"):
        if keep_palette:  # the class ids, not the colours they are shown in
            arr = np.asarray(out)
            return arr[..., 0] if arr.ndim == 3 else arr
        out = out.convert("RGBA" if "transparency" in out.info or out.mode == "PA" else "RGB")
    return np.asarray(out)


def _pillow_may_read(e: BaseException) -> bool:
    """Whether Pillow may read what tifffile could not: a codec it lacks (LZW, JPEG, ... without imagecodecs), or
    a file that is no TIFF at all (a PNG or JPEG saved under a .tif name); not damaged TIFF data."""
    text = str(e).lower()
    return (isinstance(e, (NotImplementedError, KeyError, _PillowColours)) or "imagecodecs" in text
            or "not supported" in text or "not a tiff file" in text)


class _PillowColours(Exception):
    """A TIFF in a colour space that Pillow converts to RGB and tifffile does not (YCbCr, not JPEG-compressed)."""


_TIFF_JPEG = (6, 7)  # Compression: old- and new-style JPEG, whose YCbCr the codec decodes to RGB
_TIFF_INKSET = 332  # InkSet tag: 1 = CMYK (the default), 2 = other inks (named in InkNames)


def _palette_colours(idx: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """uint8 RGB of palette indices through a TIFF colour map (3, 2**bits): its high bytes, as Pillow reads it (a map
    whose values are all under 256 was written 8-bit and is taken as it is)."""
    cmap = np.asarray(colormap)
    cmap = cmap.astype(np.uint8) if cmap.max() < 256 else (cmap >> 8).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(cmap[:, idx], 0, -1))


def _cmyk_to_rgb(path: Path, arr: np.ndarray, page) -> np.ndarray:
    """RGB (+ alpha) of a separated TIFF of the four CMYK inks, converted as Pillow converts CMYK (a CMYK JPEG reads
    the same; no ICC profile is applied to either); other ink sets are refused."""
    from PIL import Image

    extras = tuple(page.extrasamples or ())
    inks = int(page.samplesperpixel) - len(extras)
    inkset = page.tags.valueof(_TIFF_INKSET, 1)
    if inkset != 1 or inks != 4 or arr.ndim != 3 or arr.shape[2] != page.samplesperpixel:
        raise ImageReadError(f"{path}: separated (print) TIFF of {inks} ink(s)"
                             + ("" if inkset == 1 else f", InkSet {inkset} (not CMYK)")
                             + "; only CMYK (four inks) is converted to RGB: export it as an 8-bit RGB TIFF or PNG")
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageReadError(f"{path}: CMYK TIFF of {arr.dtype} samples; export it as an 8-bit RGB TIFF or PNG")
    h, w = arr.shape[:2]
    rgb = np.asarray(Image.frombytes("CMYK", (w, h), np.ascontiguousarray(arr[..., :4]).tobytes()).convert("RGB"))
    if extras and int(extras[0]) in (1, 2):  # associated / unassociated alpha: composited on white by read_rgb
        return np.dstack([rgb, arr[..., 4]])
    return rgb


def _tiff_colours(path: Path, arr: np.ndarray, page, keep_palette: bool) -> np.ndarray:
    """A TIFF's decoded samples (samples last) by its PhotometricInterpretation: RGB and grey as stored (min-is-white
    grey too: an image is refused as grey, a mask keeps its stored values, as ImageJ's masks with an inverting LUT
    mean them); palette indices as colours (masks: the indices, the class ids); CMYK converted to RGB; YCbCr
    decoded to RGB by the JPEG codec; other colour spaces (CIELAB, ...) refused with the fix."""
    from tifffile import PHOTOMETRIC

    kind = page.photometric
    if kind in (PHOTOMETRIC.MINISBLACK, PHOTOMETRIC.MINISWHITE, PHOTOMETRIC.RGB) or (
            kind == PHOTOMETRIC.YCBCR and int(page.compression) in _TIFF_JPEG):
        return arr
    if kind == PHOTOMETRIC.PALETTE and (page.colormap is not None or keep_palette):
        return arr if keep_palette else _palette_colours(arr, page.colormap)  # (a mask: its indices, map or not)
    if kind == PHOTOMETRIC.SEPARATED:
        return _cmyk_to_rgb(path, arr, page)
    if kind == PHOTOMETRIC.PALETTE:  # (an image of palette indices without their colour map)
        raise ImageReadError(f"{path}: palette TIFF without a colour map (ColorMap tag): its pixels are indices of "
                             "colours it does not hold; export it as an 8-bit RGB TIFF or PNG")
    name = getattr(kind, "name", str(kind))
    raise ImageReadError(f"{path}: TIFF of {name} pixels (PhotometricInterpretation {int(kind)}), which is not read "
                         "(RGB, grey, palette, CMYK and YCbCr are): export it as an 8-bit RGB TIFF or PNG")


def _pillow_pixels(path: Path, keep_palette: bool) -> np.ndarray:
    """A file's pixels decoded by Pillow alone, its warnings silenced (a TIFF's fallback)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        special = _read_pillow(path, keep_palette)
        if special is not None:
            return special
        with Image.open(path) as im:
            return np.asarray(im)


@contextmanager
def quiet_tifffile() -> Iterator[None]:
    """tifffile's log messages off (a damaged TIFF's offsets and tags: the caller's own error says it once),
    restored after."""
    import logging

    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _read_tiff(path: Path, keep_palette: bool = False, warn_large: bool = True) -> np.ndarray:
    """A TIFF's first image, samples last (planar-separate RGB comes as (3, H, W)), in RGB where its colour space is
    another (:func:`_tiff_colours`); refused before decoding when over :func:`image_pixel_limits`. Compressions
    tifffile cannot decode without the optional ``imagecodecs`` (LZW, JPEG, ...), and uncompressed YCbCr, are read
    with Pillow instead."""
    import tifffile

    photometric = None
    sized = False  # the pixel limit checked (and its warning given) from the TIFF's header
    try:
        # (a damaged file's tag errors are not logged: the one ImageReadError below says it)
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            series = tif.series[0]  # series 0, level 0 (tifffile.imread's default)
            page = series.keyframe
            photometric = page.photometric
            _check_pixels(path, int(page.imagewidth), int(page.imagelength), warn_large)
            sized = True
            if photometric == tifffile.PHOTOMETRIC.YCBCR and int(page.compression) not in _TIFF_JPEG:
                raise _PillowColours("YCbCr")
            arr = np.asarray(tif.asarray())
            if arr.ndim == 3 and (series.axes[:1] == "S" or series.axes[:1] == "C" and arr.shape[0] in (3, 4)):
                arr = np.moveaxis(arr, 0, -1)  # planar samples, OME channels
            return np.ascontiguousarray(_tiff_colours(path, arr, page, keep_palette))
    except ImageReadError:
        raise
    except Exception as e:  # decoder errors differ per format
        tiff_error: BaseException = e
    if _pillow_may_read(tiff_error):  # Pillow decodes some of those; a damaged file it would only complain about
        if not sized:  # (no TIFF at all: a PNG or JPEG under a .tif name)
            header = _pillow_header(path)
            if header is not None:
                _check_pixels(path, header[0], header[1], warn_large)
        try:
            arr = _pillow_pixels(path, keep_palette)
        except Exception:
            pass
        else:
            if photometric == tifffile.PHOTOMETRIC.MINISWHITE and arr.ndim == 2 and arr.dtype in (bool, np.uint8):
                arr = ~arr if arr.dtype == bool else 255 - arr  # Pillow shows it inverted: the stored values back
            return arr
    if isinstance(tiff_error, _PillowColours):
        raise ImageReadError(f"{path}: YCbCr TIFF (not JPEG-compressed) that Pillow cannot convert to RGB; export it "
                             "as an 8-bit RGB TIFF or PNG") from None
    if "imagecodecs" in str(tiff_error):
        raise ImageReadError(f"{path}: its TIFF compression needs the imagecodecs package ({tiff_error}); "
                             "`pip install imagecodecs` (the [slides] extra brings it), or re-save it uncompressed "
                             "or as PNG") from None
    raise _corrupt(path, tiff_error) from None


def _read_raw(path: Path, keep_palette: bool = False, warn_large: bool = True) -> np.ndarray:
    if not path.exists():
        raise _not_found(path)
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image file; fix the path in the manifest")
    import imageio.v3 as iio
    from PIL import Image

    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _read_tiff(path, keep_palette, warn_large)
    if suffix in Image.registered_extensions():
        # Pillow's formats: decode with Pillow only (imageio's fallback through every legacy plugin
        # adds nothing for a broken PNG/JPEG but noise and deprecation warnings)
        header = _pillow_header(path)
        if header is not None:
            _check_pixels(path, header[0], header[1], warn_large)  # refused before decoding, or one warning
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # (Pillow's, once per open: said above)
            try:
                special = _read_pillow(path, keep_palette)
                return special if special is not None else np.asarray(iio.imread(path, plugin="pillow"))
            except ImageReadError:  # (our own words: not 'corrupt')
                raise
            except Exception as e:
                cause: BaseException = e
            try:  # Pillow's own words ("cannot identify image file", "image file is truncated")
                with Image.open(path) as im:
                    im.load()
            except Exception as pil_error:
                cause = pil_error
        raise _corrupt(path, cause) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # (imageio's legacy plugins, tried in turn)
            return np.asarray(iio.imread(path))
    except Exception as e:
        raise _corrupt(path, e) from None


def _refuse_palette_mask(path: Path, img: np.ndarray) -> None:
    """ImageReadError for a palette (indexed) file of at most PALETTE_MASK_COLOURS colours read as an image: a label
    mask (LUAD-HistoSeg and BCSS-WSSS ship theirs so) taken for one, say in a folder given to predict."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                palette = im.mode in ("P", "PA")
    except Exception:
        return
    if not palette or img.ndim != 3:
        return
    used = len(np.unique(pack_rgb(np.ascontiguousarray(img[..., :3]))))
    if used <= PALETTE_MASK_COLOURS:
        raise ImageReadError(f"{path}: palette image of {used} colour(s): a label mask, it seems, not an H&E image "
                             "(stain colours need far more); leave masks out of the images (predict: --skip with a "
                             "pattern of their names), or if it is an image, save it as RGB")


def read_rgb(path: Path | str, scale: float = 1.0) -> np.ndarray:
    """Read an H&E image as uint8 RGB (H, W, 3).

    Conversions: RGBA -> RGB (alpha composited on white, a warning if not fully opaque; refused if transparent
    everywhere);
    16-bit -> 8-bit (v / 257 rounded, so 65535 -> 255; 16-bit PNGs are reduced to their high byte by
    the PNG decoder, which is within one level of that); floats in [0, 1] -> round(255 v); CMYK (JPEG and TIFF
    alike, never taken for RGBA), YCbCr and palette colours -> RGB; EXIF orientation applied.
    Refused: grayscale and other channel counts, since stain information is lost (fix: export the RGB image);
    TIFF colour spaces other than RGB, grey, palette, CMYK and YCbCr; images over :func:`image_pixel_limits`
    (before decoding; a warning, once per read, above its lower limit).
    """
    path = Path(path)
    img = _read_raw(path)
    _refuse_palette_mask(path, img)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 2)):  # L, I;16, LA
        raise ImageReadError(
            f"{path}: grayscale image; H&E needs colour. Export the original RGB image (no conversion is guessed)"
        )
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ImageReadError(f"{path}: unsupported shape {img.shape}; expected H x W x 3 (RGB) or x 4 (RGBA)")
    if img.dtype == np.uint8 and png_bit_depth(path) == 16 and 0 < int(img[..., :3].max()) <= 15:
        warnings.warn(f"{path}: 16-bit PNG whose values stop under 4096 (10- or 12-bit data?): the PNG reader keeps "
                      "each value's high byte, so it reads almost black. Export it as 8-bit RGB, or rescale it to the "
                      "full 16-bit range", UserWarning, stacklevel=2)
    if img.dtype == np.uint16:
        top = int(img[..., :3].max())
        if 0 < top <= 4095:  # 10/12-bit camera data in a 16-bit file: / 257 leaves it nearly black
            warnings.warn(f"{path}: 16-bit image whose values stop at {top} (10- or 12-bit data?); read as 16-bit it "
                          "is almost black. Export it as 8-bit RGB, or rescale it to the full 16-bit range",
                          UserWarning, stacklevel=2)
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and img.min() >= 0 and img.max() <= 1:
            img = np.round(img * 255).astype(np.uint8)
        else:
            raise ImageReadError(f"{path}: unsupported pixel type {img.dtype}; save as 8- or 16-bit RGB")
    if img.shape[2] == 4:
        alpha = img[..., 3:4].astype(np.float32) / 255.0
        if alpha.max() == 0.0:  # (on white: a blank image, which a network still labels)
            raise ImageReadError(f"{path}: RGBA image that is transparent everywhere (alpha 0): nothing of it shows; "
                                 "export the image again with its pixels opaque, or leave it out")
        if alpha.min() < 1.0:
            frac = float((alpha < 1.0).mean())
            warnings.warn(f"{path}: RGBA image with transparency ({100 * frac:.1f}% of pixels not opaque); "
                          "composited on white. Export it as RGB to silence this", UserWarning, stacklevel=2)
        img = np.round(img[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    img = np.ascontiguousarray(img)
    if scale != 1.0:
        img = resize(img, scale, nearest=False)
    return img


def read_mask(path: Path | str, expected_hw: tuple[int, int] | None = None, scale: float = 1.0,
              colors: dict[int, int] | None = None) -> np.ndarray:
    """Read a single-channel mask as an integer array; check its size against the image's (before scaling).

    Palette (indexed) PNGs give their indices, the class ids (as LUAD-HistoSeg and BCSS-WSSS store them). With
    ``colors`` (packed 0xRRGGBB -> class id, :func:`pack_rgb`) the mask is read as colours, palette ones too, and
    each pixel takes the id of its colour; a colour not in ``colors`` is an error that names it. A mask over
    :func:`image_pixel_limits` is refused as its image is (without the warning below that: its image gives it)."""
    path = Path(path)
    m = _read_raw(path, keep_palette=colors is None, warn_large=False)  # (its image warns)
    if colors is not None:
        m = _colours_to_ids(path, m, colors)
    elif m.ndim == 3:
        if drawn_in_alpha(m):
            raise ImageReadError(
                f"{path}: the mask is drawn in its alpha (transparency) channel: its colour is one value "
                f"({int(m[..., 0].flat[0])}) everywhere, so it would read as one class. Save the drawing as a "
                "one-channel mask of class ids (e.g. the alpha channel itself: 0 = background, 255 = foreground)"
            )
        if m.shape[2] >= 3 and not (np.array_equal(m[..., 0], m[..., 1]) and np.array_equal(m[..., 0], m[..., 2])):
            raise ImageReadError(
                f"{path}: colour mask (its pixels are colours, not class ids): map each colour to its class in "
                "data.mask_colors (e.g. {tumour: '#ff0000', stroma: '#00ff00', ignore: '#ffffff'}), or convert it "
                "to one channel of class ids"
            )
        m = m[..., 0]
    if expected_hw is not None and tuple(m.shape[:2]) != tuple(expected_hw):
        turned = tuple(m.shape[:2]) == tuple(expected_hw)[::-1]
        raise ImageReadError(
            f"{path}: mask size {m.shape[1]}x{m.shape[0]} (WxH) differs from its image {expected_hw[1]}x{expected_hw[0]}; "
            + ("it is the image's size turned by 90 degrees: the image probably carries an EXIF orientation (read as "
               "displayed) that the mask was not drawn in; export the mask as the image is displayed, or remove the "
               "image's orientation tag (e.g. `exiftool -Orientation= IMAGE`)" if turned else
               "the mask belongs to another image or was resized: fix the manifest row or re-export the mask")
        )
    if scale != 1.0:
        m = resize(m, scale, nearest=True)
    return m.astype(np.int64) if m.dtype != np.uint8 else m


def drawn_in_alpha(m: np.ndarray) -> bool:
    """Whether an LA / RGBA mask (H, W, 2 or 4) holds its drawing in the alpha channel: one colour everywhere,
    the alpha not constant (strokes painted on a transparent layer)."""
    if m.ndim != 3 or m.shape[2] not in (2, 4) or m[..., -1].min() == m[..., -1].max():
        return False
    colour = m[..., :-1]
    return bool((colour == colour.reshape(-1, colour.shape[-1])[0]).all())


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours as one int per pixel, 0xRRGGBB."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _colours_to_ids(path: Path, m: np.ndarray, colors: dict[int, int]) -> np.ndarray:
    """Class ids of a colour mask (H, W, 3/4; or grey (H, W), read as (v, v, v)) from ``colors``."""
    if m.dtype != np.uint8:
        raise ImageReadError(f"{path}: colour mask of {m.dtype} values; data.mask_colors needs an 8-bit RGB mask "
                             "(re-export it as 8-bit PNG)")
    rgb = np.repeat(m[..., None], 3, axis=2) if m.ndim == 2 else m[..., :3]
    if rgb.shape[2] < 3:  # grey + alpha
        rgb = np.repeat(rgb[..., :1], 3, axis=2)
    return lookup_ids(path, pack_rgb(rgb), colors, "colour(s)", lambda k: f"#{k:06x}", "data.mask_colors",
                      "{tumour: '#ff0000', ignore: '#ffffff'}")


def lookup_ids(path: Path, raw: np.ndarray, table: dict[int, int], what: str, show: Callable[[int], str], key: str,
               example: str) -> np.ndarray:
    """uint8 class ids of the values of ``raw`` through ``table``; a value the table lacks is an ImageReadError
    naming ``path``, the values (most pixels first, ``show`` writes them) and the config ``key`` to add them to."""
    keys, inverse = np.unique(raw, return_inverse=True)
    counts = np.bincount(inverse.ravel(), minlength=len(keys))
    unknown = sorted(((int(k), int(n)) for k, n in zip(keys, counts) if int(k) not in table), key=lambda kv: -kv[1])
    if unknown:
        listed = ", ".join(f"{show(k)} ({n} px)" for k, n in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        first, option = show(unknown[0][0]), "--mask-colors" if key.endswith("colors") else "--mask-values"
        raise ImageReadError(f"{path}: {what} {listed} are in no entry of {key}; add each to its class (or to "
                             f"'ignore'): in the config, e.g. --set \"{key}={example}\" with your classes (CLASS: "
                             f"{first!r}), or to `histowsss data manifest` / `init` {option} (CLASS={first})")
    lut = np.array([table[int(k)] for k in keys], dtype=np.uint8)
    return lut[inverse.reshape(raw.shape)]


def image_size(path: Path | str) -> tuple[int, int]:
    """(height, width) of an image without decoding all pixels where possible."""
    path = Path(path)
    if not path.exists():
        raise _not_found(path)
    header = _pillow_header(path)  # (no pixel limit: the size of an image too large to read is said too)
    if header is not None:
        w, h, orientation = header
        # EXIF orientations 5-8 turn the image by a quarter: read_rgb returns it as shown
        return (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    img = _read_raw(path)
    return img.shape[0], img.shape[1]


def lossy_compression(path: Path | str) -> str | None:
    """What stores a file's pixels lossily, which changes a mask's labels near every edge: 'JPEG' for a JPEG file
    (whatever its name), 'JPEG-compressed TIFF' for a TIFF; None for a lossless file or one Pillow cannot open."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if im.format in ("JPEG", "MPO"):
                    return "JPEG"
                if im.format == "TIFF" and str(im.info.get("compression", "")) in ("jpeg", "tiff_jpeg"):
                    return "JPEG-compressed TIFF"
    except Exception:  # (unreadable: the reader's own error says so)
        return None
    return None


def resize(img: np.ndarray, scale: float, nearest: bool) -> np.ndarray:
    """Resize by a factor (bilinear with antialiasing for images, nearest for label maps)."""
    from PIL import Image

    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if nearest:
        if img.dtype not in (np.uint8,):
            out = Image.fromarray(img.astype(np.int32)).resize(size, Image.NEAREST)
            return np.asarray(out).astype(img.dtype)
        return np.asarray(Image.fromarray(img).resize(size, Image.NEAREST))
    return np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR, reducing_gap=None))
