"""Decoding real web-image files (made with Pillow here) and the preprocessing policy."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, features

from worker.engine.images import (
    ALLOWED_FORMATS,
    BACKGROUND,
    ImageError,
    ImageLimits,
    _count_gif_frames,
    decode_image,
    to_model_input,
)

RNG = np.random.default_rng(0)
PHOTO = Image.fromarray(RNG.integers(0, 256, (30, 50, 3), dtype=np.uint8))  # 50 wide, 30 tall


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def error_code(data: bytes, limits: ImageLimits | None = None) -> str:
    with pytest.raises(ImageError) as caught:
        decode_image(data, limits)
    return caught.value.code


def with_png_size(data: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR claiming another size (and a valid CRC), as a decompression bomb does."""
    at = data.index(b"IHDR")
    body = struct.pack(">II", width, height) + data[at + 12 : at + 17]
    return data[: at + 4] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + data[at + 21 :]


def animated(fmt: str, n_frames: int, size: int = 4) -> bytes:
    """``n_frames`` frames of distinct solid colours; frame 0 is (0, 0, 7), frame 1 (1, 40, 7)."""
    frames = [Image.new("RGB", (size, size), (i % 256, (40 * i) % 256, 7 + i // 256)) for i in range(n_frames)]
    options = {"lossless": True} if fmt == "WEBP" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=10, **options)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_common_formats_decode_to_rgb_at_their_size(fmt):
    image = decode_image(encode(PHOTO, fmt))
    assert image.mode == "RGB" and image.size == (50, 30)


def test_avif_follows_pillow_support():
    assert ("AVIF" in ALLOWED_FORMATS) == features.check("avif")
    if features.check("avif"):
        assert decode_image(encode(PHOTO, "AVIF")).size == (50, 30)


def test_lossless_formats_keep_pixels():
    for fmt in ("PNG", "WEBP"):
        options = {"lossless": True} if fmt == "WEBP" else {}
        assert np.array_equal(np.asarray(decode_image(encode(PHOTO, fmt, **options))), np.asarray(PHOTO))


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animations_give_their_first_frame(fmt):
    image = decode_image(animated(fmt, 3))
    assert image.getpixel((0, 0)) == (0, 0, 7)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image = decode_image(encode(PHOTO, "JPEG", exif=exif))
    assert image.size == (30, 50)


def test_cmyk_jpeg_converts_to_rgb():
    cmyk = Image.new("CMYK", (16, 12), (0, 255, 255, 0))  # pure red in CMYK
    image = decode_image(encode(cmyk, "JPEG", quality=95))
    r, g, b = image.getpixel((8, 6))
    assert image.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_sixteen_bit_grey_png_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = decode_image(data)
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_palette_transparency_and_alpha_are_flattened_on_white():
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30] + [200, 0, 0] * 255)
    palette.putpixel((1, 1), 1)
    image = decode_image(encode(palette, "PNG", transparency=0))
    assert image.getpixel((0, 0)) == BACKGROUND and image.getpixel((1, 1)) == (200, 0, 0)

    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    r, g, b = decode_image(encode(rgba, "PNG")).getpixel((0, 0))
    assert 126 <= r <= 128 and r == g == b  # half-transparent black on white is mid grey
    grey_alpha = Image.new("LA", (4, 4), (0, 0))
    assert decode_image(encode(grey_alpha, "PNG")).getpixel((2, 2)) == BACKGROUND


def test_empty_and_unsupported_and_corrupt():
    assert error_code(b"") == "empty"
    assert error_code(RNG.bytes(500)) == "unsupported_format"
    assert error_code(encode(PHOTO, "BMP")) == "unsupported_format"
    assert error_code(encode(PHOTO, "TIFF")) == "unsupported_format"
    png = encode(PHOTO, "PNG")
    assert error_code(png[:16] + b"\x00" * 40) == "corrupt"  # PNG signature, broken header
    jpeg = encode(PHOTO, "JPEG")
    assert error_code(jpeg[:400] + RNG.bytes(len(jpeg) - 400)) in ("corrupt", "truncated")
    assert error_code(png, ImageLimits(max_bytes=100)) == "too_many_bytes"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(fmt):
    data = encode(PHOTO, fmt)
    assert error_code(data[: len(data) // 2]) == "truncated"


def test_decompression_bombs_are_refused_from_the_header_quickly():
    tiny = encode(Image.new("1", (8, 8)), "PNG")
    start = time.perf_counter()
    assert error_code(with_png_size(tiny, 50_000, 50_000)) == "too_many_pixels"  # Pillow's own guard
    assert error_code(with_png_size(tiny, 9_000, 9_000)) == "too_many_pixels"  # our 64 Mpx cap
    assert error_code(encode(PHOTO, "PNG"), ImageLimits(max_pixels=1000)) == "too_many_pixels"
    gif = bytearray(encode(Image.new("P", (2, 2)), "GIF"))
    gif[6:10] = struct.pack("<HH", 60_000, 60_000)  # a huge logical screen around a tiny frame
    assert error_code(bytes(gif)) == "too_many_pixels"
    assert time.perf_counter() - start < 1.0


def test_animation_bombs_are_refused_by_frame_count_quickly():
    limits = ImageLimits(max_frames=50)
    for fmt in ("GIF", "WEBP", "PNG"):
        data = animated(fmt, 51)
        start = time.perf_counter()
        assert error_code(data, limits) == "too_many_frames", fmt
        assert time.perf_counter() - start < 0.5
        assert decode_image(animated(fmt, 50), limits).size == (4, 4)


def raw_gif(n_frames: int) -> bytes:
    """A 1x1 GIF of ``n_frames`` frames written byte by byte (Pillow takes seconds to write thousands)."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame * n_frames + b";"


def test_gif_frame_counter_agrees_with_pillow():
    for data in (raw_gif(1), raw_gif(7), animated("GIF", 5), encode(PHOTO, "GIF")):
        assert _count_gif_frames(data, 10_000) == Image.open(io.BytesIO(data)).n_frames


def test_gif_frame_count_stops_at_the_cap():
    assert decode_image(raw_gif(1000)).size == (1, 1)  # the default cap is 1,000 frames
    data = raw_gif(200_000)
    start = time.perf_counter()
    assert error_code(data) == "too_many_frames"
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("size", [(1000, 10), (10, 1000), (1, 1), (33, 17), (8, 8)])
def test_model_input_shape_and_range_for_any_aspect(size):
    image = Image.fromarray(RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    for input_size in ([3, 8, 8], [3, 8, 16], [1, 12, 12]):
        x = to_model_input([image, image], input_size)
        assert x.shape == (2, *input_size) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
        assert torch.equal(x * 255, (x * 255).round())  # on the 8-bit grid


def test_policy_is_resize_then_centre_crop():
    wide = np.zeros((100, 300, 3), dtype=np.uint8)
    wide[:, :100] = (255, 0, 0)
    wide[:, 100:200] = (0, 255, 0)
    wide[:, 200:] = (0, 0, 255)
    x = to_model_input([Image.fromarray(wide)], [3, 8, 8])[0]
    assert torch.allclose(x[1], torch.ones(8, 8), atol=0.02)  # only the green centre remains
    assert x[0].max() < 0.02 and x[2].max() < 0.02


def test_downscaling_is_antialiased():
    checker = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)
    x = to_model_input([Image.fromarray(checker).convert("RGB")], [3, 8, 8])
    assert torch.allclose(x, torch.full_like(x, 0.5), atol=0.02)  # point sampling would give 0 or 1
