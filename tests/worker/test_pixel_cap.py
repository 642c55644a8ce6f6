"""The pixel cap follows what a decode costs: JPEGs (decoded scaled down in draft mode) may have 64 Mpx, formats
that decode at full size (PNG, WebP, ...) 24 Mpx, so that no image at a cap costs the analysis hundreds of MB."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from worker.engine.imaging import ImageError, ImageLimits, probe_image


def _image(fmt: str, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF"])
@pytest.mark.slow
def test_formats_decoded_at_full_size_are_capped_lower(fmt: str) -> None:
    with pytest.raises(ImageError) as refused:
        probe_image(_image(fmt, 6400, 4800), ImageLimits())  # 30.7 Mpx
    assert refused.value.code == "too_many_pixels"
    assert probe_image(_image(fmt, 6000, 4000), ImageLimits()).width == 6000  # 24 Mpx camera size


def test_jpegs_keep_the_64_megapixel_cap() -> None:
    assert probe_image(_image("JPEG", 8000, 6000), ImageLimits()).width == 8000  # a 48 Mpx phone photo
    with pytest.raises(ImageError):
        probe_image(_image("JPEG", 9000, 8000), ImageLimits())
