"""Decoding untrusted web images into RGB (Pillow only: the API imports this without the model code).

Everything here assumes the bytes are hostile.  The rules, in the order they are applied:

1. At most ``ImageLimits.max_bytes`` bytes; zero bytes is ``empty``.
2. Only the formats in ``ALLOWED_FORMATS`` are parsed (Pillow is told so via ``Image.open(formats=...)``), so
   none of Pillow's exotic plugins ever sees the bytes; anything else is ``unsupported_format``.
3. The pixel count is checked from the header, before any pixel is decoded: ``too_many_pixels``.  Pillow's
   own guard (``DecompressionBombError`` at twice ``Image.MAX_IMAGE_PIXELS``, 179 Mpx by default) is caught
   too; the default cap here (64 Mpx) sits below Pillow's, so ours is the one that normally fires.
4. Animations: the frame count is checked before decoding (GIF frames are counted by walking the block
   structure, stopping at the cap, so a GIF of a million tiny frames costs nothing); only the first frame is
   ever decoded.  More frames than ``max_frames`` is ``too_many_frames``.
5. Decoding errors become ``truncated`` (the data ends early) or ``corrupt`` (anything else).  No exception
   other than ``ImageError`` leaves ``decode_image``.
6. EXIF orientation is applied, then the mode is normalised to RGB: palette and grey via Pillow, CMYK via
   Pillow's conversion (no ICC colour management), 16-bit grey scaled down (not clipped), and any alpha
   (including palette transparency) flattened onto a WHITE background, the usual background of a web page.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, features

from worker.engine import budget as budgets
from worker.engine.budget import PixelBudget

_BASE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
ALLOWED_FORMATS: tuple[str, ...] = _BASE_FORMATS + (("AVIF",) if features.check("avif") else ())
# Pillow's JPEG parser reports "MPO" for the JPEGs many phone cameras write (extra frames appended).
JPEG_FORMATS = ("JPEG", "MPO")

BACKGROUND = (255, 255, 255)  # alpha is flattened onto white


class ImageError(ValueError):
    """An input that cannot be turned into a model input; ``code`` is stable and machine-readable."""

    code = "image_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class EmptyImage(ImageError):
    code = "empty"


class TooManyBytes(ImageError):
    code = "too_many_bytes"


class UnsupportedFormat(ImageError):
    code = "unsupported_format"


class CorruptImage(ImageError):
    code = "corrupt"


class TruncatedImage(ImageError):
    code = "truncated"


class TooManyPixels(ImageError):
    code = "too_many_pixels"


class TooManyFrames(ImageError):
    code = "too_many_frames"


@dataclass(frozen=True)
class ImageLimits:
    """Caps applied before decoding.  64 Mpx covers 48-50 Mpx phone photos, which are JPEGs: the decoder's
    draft mode reads them scaled down (a few MB for the analysis). Other formats decode at full size, about 8
    bytes a pixel through the analysis (a 64 Mpx PNG cost 512 MB more), so they are capped at 24 Mpx, still
    above any 4K/5K screenshot or web image.  1,000 frames covers nearly all real animations (only the first
    frame is decoded, but counting frames still costs time)."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 64 * 1024 * 1024
    max_pixels_full_decode: int = 24 * 1024 * 1024  # formats without a draft mode (all but JPEG)
    max_frames: int = 1000


_MAGIC = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
}


def sniff_format(data: bytes) -> str | None:
    """The allowed format the bytes claim to be by their signature, or None (tells corrupt from unsupported)."""
    for name, signatures in _MAGIC.items():
        if data.startswith(signatures):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "AVIF"
    return None


def decode_image(data: bytes, limits: ImageLimits | None = None, draft_size: int | None = None) -> Image.Image:
    """Decode ``data`` (the bytes of one image file) into an RGB image, or raise an ``ImageError``.

    ``draft_size``: for JPEG, let the decoder downscale by 2, 4 or 8 while both sides stay at least this
    large; a 24 Mpx photo then decodes in a fraction of the time and memory, and the model never sees the
    lost detail anyway (its input is tens of pixels wide).
    """
    limits = limits or ImageLimits()
    image = _open(data, limits)
    return _prepare(image, limits, draft_size, owned=True)


@contextmanager
def decoding(
    data: bytes,
    limits: ImageLimits | None = None,
    draft_size: int | None = None,
    budget: PixelBudget | None = None,
) -> Iterator[Image.Image]:
    """``decode_image`` under the process's pixel budget (``budget.DECODE_BUDGET`` by default): the decoded
    size (after JPEG draft reduction) is held from before the pixels are decoded until the block ends, and the
    image is closed then (its memory freed), so a caller keeps only what it derived from it."""
    budget = budget or budgets.DECODE_BUDGET
    limits = limits or ImageLimits()
    image = _open(data, limits)
    _check_size(image, limits)
    if draft_size and image.format in JPEG_FORMATS:
        try:
            image.draft(image.mode, (draft_size, draft_size))  # sets the size that will be decoded
        except Exception as err:  # noqa: BLE001 - hostile bytes: a typed error
            raise _classify(err, "JPEG") from err
    with budget.hold(image.width * image.height):
        decoded = _prepare(image, limits, None, owned=True)
        if decoded is not image:  # converted (palette, CMYK, alpha): the decoded original is not needed
            image.close()
        try:
            yield decoded
        finally:
            decoded.close()


@contextmanager
def holding(
    image: Image.Image, limits: ImageLimits | None = None, budget: PixelBudget | None = None
) -> Iterator[Image.Image]:
    """``normalise_image`` for an image the caller opened, its pixels held against the budget for the block."""
    with (budget or budgets.DECODE_BUDGET).hold(image.width * image.height):
        yield normalise_image(image, limits)


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def probe_image(data: bytes, limits: ImageLimits | None = None) -> ImageInfo:
    """The checks of ``decode_image`` that need only the header: size, format, pixel and frame caps.

    Cheap enough for the API to refuse a bomb at the door; the worker still decodes fully (and may still
    find the data corrupt further in).
    """
    limits = limits or ImageLimits()
    image = _open(data, limits)
    _check_size(image, limits)
    fmt = "JPEG" if image.format in JPEG_FORMATS else str(image.format)
    return ImageInfo(fmt, *image.size)


def _check_size(image: Image.Image, limits: ImageLimits) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise EmptyImage(f"the image is {width}x{height} pixels")
    cap = limits.max_pixels if image.format in JPEG_FORMATS else min(limits.max_pixels, limits.max_pixels_full_decode)
    if width * height > cap:
        raise TooManyPixels(f"the image is {width}x{height} pixels; the limit is {cap} pixels for {image.format}")


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """Rules 1 to 4 up to the header: byte cap, allowed formats only, Pillow's bomb guard, the GIF frame count."""
    if not data:
        raise EmptyImage("the image has zero bytes")
    if len(data) > limits.max_bytes:
        raise TooManyBytes(f"the image has {len(data)} bytes; the limit is {limits.max_bytes}")
    claimed = sniff_format(data)
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as err:
        raise TooManyPixels(str(err)) from err
    except Image.UnidentifiedImageError as err:
        if claimed is None:
            raise UnsupportedFormat(f"not one of the accepted formats ({', '.join(ALLOWED_FORMATS)})") from err
        raise CorruptImage(f"the {claimed} header is malformed") from err
    except Exception as err:  # noqa: BLE001 - any parser failure on hostile bytes is a typed error
        raise _classify(err, claimed or "image") from err
    if image.format == "GIF":
        _check_frames(_count_gif_frames(data, limits.max_frames + 1), limits)
    return image


def normalise_image(image: Image.Image, limits: ImageLimits | None = None) -> Image.Image:
    """The checks and conversions of ``decode_image`` for an image the caller already opened."""
    return _prepare(image, limits or ImageLimits(), None)  # not owned: the caller's image is left as it is


def _prepare(image: Image.Image, limits: ImageLimits, draft_size: int | None, owned: bool = False) -> Image.Image:
    """Rules 3 to 6 on an opened image; ``owned``: the image is ours to change in place (no copy)."""
    _check_size(image, limits)
    try:
        # GIF: decode_image counted the frames from the bytes, stopping at the cap (Pillow's n_frames walks the
        # whole file); a GIF the caller opened is not re-counted, since only its first frame is decoded.
        if image.format != "GIF":
            _check_frames(getattr(image, "n_frames", 1), limits)
        if image.tell() != 0:  # only an image the caller already moved through; a fresh one is at frame 0
            image.seek(0)
        if draft_size and image.format in JPEG_FORMATS:
            image.draft(image.mode, (draft_size, draft_size))
        image.load()
        return to_rgb(_apply_orientation(image, owned))
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise TooManyPixels(str(err)) from err
    except Exception as err:  # noqa: BLE001 - decoder errors on hostile bytes are typed, never a crash
        raise _classify(err, image.format or "image") from err


def _apply_orientation(image: Image.Image, in_place: bool = False) -> Image.Image:
    """EXIF orientation applied; a broken EXIF block leaves the image as stored rather than rejecting it.
    ``in_place`` spares the copy Pillow otherwise makes even when there is nothing to turn (a 24 Mpx image
    is 96 MB in Pillow), for an image nobody else holds."""
    try:
        if in_place:
            ImageOps.exif_transpose(image, in_place=True)
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed metadata is common on the web and does not harm the pixels
        return image


def _check_frames(frames: int, limits: ImageLimits) -> None:
    if frames > limits.max_frames:
        raise TooManyFrames(f"the animation has more than {limits.max_frames} frames")


def _classify(err: Exception, what: str) -> ImageError:
    text = str(err)
    if isinstance(err, EOFError) or "truncated" in text.lower() or "end of file" in text.lower():
        return TruncatedImage(f"the {what} data ends early: {text or type(err).__name__}")
    if isinstance(err, MemoryError):
        return TooManyPixels(f"decoding the {what} ran out of memory")
    return CorruptImage(f"the {what} data could not be decoded: {text or type(err).__name__}")


def _count_gif_frames(data: bytes, stop_at: int) -> int:
    """Count image descriptors by walking the GIF block structure, stopping once ``stop_at`` is reached.

    Pillow's ``n_frames`` walks the whole file in Python; this stops early, so the cost of an animation bomb
    is bounded by the frame cap, not by the file size.  A malformed structure ends the count (the decoder
    reports the damage later if it reaches it).
    """
    if len(data) < 13:
        return 0
    pos = 13
    if data[10] & 0x80:  # global colour table
        pos += 3 * (2 ** ((data[10] & 0x07) + 1))
    frames = 0
    while pos < len(data) and frames < stop_at:
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor
            frames += 1
            if pos + 10 > len(data):
                break
            packed = data[pos + 9]
            pos += 10
            if packed & 0x80:  # local colour table
                pos += 3 * (2 ** ((packed & 0x07) + 1))
            pos = _skip_sub_blocks(data, pos + 1)  # skip the LZW minimum code size, then the data
        else:
            break
    return frames


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while pos < len(data):
        size = data[pos]
        pos += 1 + size
        if size == 0:
            break
    return pos


def to_rgb(image: Image.Image) -> Image.Image:
    """Normalise any Pillow mode to 8-bit RGB, flattening alpha onto ``BACKGROUND``."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: scale 0..65535 to 0..255 (Pillow's own conversion would clip everything above 255).
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    elif image.mode in ("LA", "La", "PA", "RGBa") or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, image).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def crop_box(width: int, height: int, target_width: int, target_height: int) -> tuple[float, float, float, float]:
    """The largest centred box of the source with the target's aspect ratio."""
    target_aspect = target_width / target_height
    if width / height > target_aspect:  # too wide: trim the sides
        box_width = height * target_aspect
        left = (width - box_width) / 2
        return (left, 0.0, left + box_width, float(height))
    box_height = width / target_aspect  # too tall: trim top and bottom
    top = (height - box_height) / 2
    return (0.0, top, float(width), top + box_height)


def resize_for_model(image: Image.Image, input_size: Sequence[int]) -> Image.Image:
    """Centre-crop-then-resize policy: keep the largest centred region with the model's aspect ratio, then
    resize it to the model's input with an antialiased bicubic filter.

    Why crop rather than pad or stretch: the models were trained on full-frame images (no bars), and
    stretching distorts shapes; cropping keeps the subject's geometry at the cost of the edges of very wide
    or tall images.  The crop comes first so nothing outside it leaks in through the filter.  Pillow widens
    its kernel by the scale factor when shrinking, which is what antialiasing means here; small images are
    upscaled by the same filter.  ``input_size`` is (C, H, W); C=1 gives grey.
    """
    channels, height, width = input_size
    left, top, right, bottom = (round(v) for v in crop_box(image.width, image.height, width, height))
    if (left, top, right, bottom) != (0, 0, image.width, image.height):
        image = image.crop((left, top, max(right, left + 1), max(bottom, top + 1)))
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    return resized.convert("L") if channels == 1 else resized
