"""Real web imagery as data: photos, artwork and rendered pages from Debian packages, cut into web-sized images.

    python -m worker.research.web_images build            # installs the packages when missing (as root), then builds
    python -m worker.research.web_images summary          # what the built set holds, per split and kind

The perturbation detector and its calibration must meet the images a service really sees, not only 32x32
CIFAR-10 JPEGs.  The sources:

- wallpapers and backgrounds (photos of nature, cities, animals, and digital artwork): ``mate-backgrounds``,
  ``ukui-wallpapers``, ``plasma-workspace-wallpapers``, ``gnome-backgrounds``, ``lomiri-wallpapers-16.04``,
  ``lomiri-wallpapers-20.04``;
- ``stellarium-data``'s deep-sky images: about 550 telescope photographs of nebulae and galaxies (dark, noisy,
  many small sources: the astronomy images people post are like this);
- ``tuxpaint-stamps-default``: about 800 photos and drawings of single objects, animals and symbols, mostly
  with transparency (product shots and logos on the web look like this);
- rendered pages: screenshots and illustrations drawn with Pillow in the packaged fonts (text, flat colour,
  buttons, charts, logos on transparency);
- drawn patterns (kind ``pattern``): stripes, checks, halftone screens, moire, hatching and dithered
  gradients at periods of 2-40 px.  Regular high-frequency structure is what the detector confused with a
  perturbation (a striped wallpaper's crops were most of its false flags), and the packages hold too few such
  pictures to teach it otherwise or to set a threshold on.  ``worker.research.evaluate`` reports them as a benign kind
  apart from the ordinary images, since they come from the same generator in every split.

Each source image is cut into crops at several scales (64-1024 px on the longest side; twice as many for the
calibration split's sources) and given a history of the kind the web gives images: a camera-like first JPEG
(quality 85-98) for photos, then delivery as a web JPEG (60-90), PNG or WebP.  Sources are split into train /
calibration / test by a hash of their name, so no source image crosses a split, and ``manifest.jsonl`` records
for every file its split, source, package, licence, size and history.  The files are what a server would
receive, byte for byte.

scikit-image's, matplotlib's and scikit-learn's sample images are NOT used here: they are the project's
independent check set.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

BUILD_VERSION = "web-images/4"  # bump when sources, splits or histories change: the cache is rebuilt
# The crops' random draws are seeded with this, not BUILD_VERSION: a version that only adds sources keeps every
# earlier source's crops byte for byte, so measurements on the earlier test split stay comparable.
CROP_SEED = "web-images/2"
SPLITS = ("train", "calibration", "test")
SPLIT_SHARES = (0.6, 0.2, 0.2)
DEFAULT_DIR = Path.home() / ".cache" / "robust-scanner" / "web-images"


class PackagedPictures(NamedTuple):
    kind: str  # what its pictures are (wallpaper, astronomy, stamp)
    folder: str  # where in the package they lie: nothing else of it is read


PACKAGES = {
    "mate-backgrounds": PackagedPictures("wallpaper", "/usr/share/backgrounds/mate"),
    "ukui-wallpapers": PackagedPictures("wallpaper", "/usr/share/backgrounds"),
    "plasma-workspace-wallpapers": PackagedPictures("wallpaper", "/usr/share/wallpapers"),
    "gnome-backgrounds": PackagedPictures("wallpaper", "/usr/share/backgrounds/gnome"),
    "lomiri-wallpapers-16.04": PackagedPictures("wallpaper", "/usr/share/backgrounds"),
    "lomiri-wallpapers-20.04": PackagedPictures("wallpaper", "/usr/share/backgrounds"),
    "tuxpaint-stamps-default": PackagedPictures("stamp", "/usr/share/tuxpaint/stamps"),
    "stellarium-data": PackagedPictures("astronomy", "/usr/share/stellarium/nebulae"),
}
FONT_PACKAGES = ("fonts-dejavu-core", "fonts-liberation2")
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/liberation2")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Crops per source image: large wallpapers give many distinct web images, a stamp or a page one or two.
CROPS_PER_SOURCE = {"wallpaper": 24, "astronomy": 2, "stamp": 2, "page": 3, "pattern": 3}
# The calibration split's sources are cut twice as often (the extra crops follow the usual ones, which stay
# byte for byte): its threshold is a 0.3-0.5% tail of each group, which 300-400 images per group set from their
# one or two highest (web-images/3).  More crops of the same pictures sharpen that tail within each picture;
# they add no new pictures, so the artefact's interval is optimistic and the test split stays the judge.
CALIBRATION_CROP_FACTOR = 2
RENDERED_PAGES = 240
DRAWN_PATTERNS = 360
SYNTHETIC_KINDS = ("pattern",)  # drawn by one generator for every split: not ordinary images of the test split
LIMITED_CROPS = 2
MIN_SIDE = 32  # smaller packaged pictures (icons) are left out


class MissingImagery(RuntimeError):
    """The Debian packages that hold the imagery are not installed (and could not be)."""


@dataclass(frozen=True)
class Source:
    id: str  # stable name: the split is a hash of it
    kind: str  # wallpaper, astronomy, stamp, page, pattern
    package: str
    licence: str
    path: str | None  # None for rendered pages (drawn from the id's seed)

    @property
    def split(self) -> str:
        u = int(hashlib.sha256(self.id.encode()).hexdigest()[:8], 16) / 2**32
        edges = [sum(SPLIT_SHARES[: i + 1]) for i in range(len(SPLITS))]
        return next(name for name, edge in zip(SPLITS, edges, strict=True) if u < edge)


@dataclass
class WebImage:
    file: str  # relative to the set's folder
    split: str
    source: str
    kind: str
    package: str
    licence: str
    width: int
    height: int
    format: str
    history: list[str] = field(default_factory=list)


# --- installing and finding the sources ---------------------------------------------------------------------
def missing_packages() -> list[str]:
    wanted = [*PACKAGES, *FONT_PACKAGES]
    return [p for p in wanted if not Path(f"/usr/share/doc/{p}/copyright").is_file()]


def install_packages(packages: Sequence[str]) -> None:
    """``apt-get install`` the packages (root only); a clear error otherwise."""
    if not packages:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise MissingImagery(f"install the Debian packages {' '.join(packages)} (apt-get install, as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True, env=env)


def package_licence(package: str) -> str:
    """The licences named in the package's Debian copyright file (DEP-5), or a pointer to that file."""
    path = Path(f"/usr/share/doc/{package}/copyright")
    text = path.read_text(errors="replace") if path.is_file() else ""
    names = sorted({m.strip() for m in re.findall(r"^License:\s*(\S.*)$", text, re.MULTILINE)})
    return " / ".join(names) if names else f"see {path}"


def _package_files(package: str) -> list[Path]:
    """The package's pictures under its folder (``dpkg -L``, so another package's files there are left out)."""
    folder = PACKAGES[package].folder + "/"
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout
    return sorted(
        Path(line)
        for line in listing.splitlines()
        if line.startswith(folder)
        and line.lower().endswith(IMAGE_SUFFIXES)
        and "/screenshot" not in line
        and Path(line).is_file()
    )


def _source_name(package: str, path: Path) -> str:
    """Files that are one picture in several sizes or variants share a name (so they share a split)."""
    if package == "plasma-workspace-wallpapers":  # /usr/share/wallpapers/<Name>/contents/images*/WxH.ext
        return path.parts[4]
    stem = re.sub(r"_\d+x\d+$", "", path.stem)  # Elephants_3840x2160 -> Elephants
    stem = re.sub(r"-[dl]$", "", stem)  # gnome's dark and light variants
    return stem


def packaged_sources() -> list[Source]:
    """One source per distinct picture in the packages, its largest file kept."""
    best: dict[str, tuple[int, Source]] = {}
    for package, pictures in PACKAGES.items():
        licence, kind = package_licence(package), pictures.kind
        for path in _package_files(package):
            if kind == "stamp" and ("thumb" in path.stem or path.stem.endswith("_mirror")):
                continue
            name = f"{package}:{_source_name(package, path)}"
            size = path.stat().st_size
            if name not in best or size > best[name][0]:
                best[name] = (size, Source(name, kind, package, licence, str(path)))
    return [source for _size, source in sorted(best.values(), key=lambda item: item[1].id)]


def rendered_sources(count: int = RENDERED_PAGES) -> list[Source]:
    licence = " / ".join(package_licence(p) for p in FONT_PACKAGES) + " (fonts); drawn by this project"
    return [Source(f"rendered:page-{i:04d}", "page", "+".join(FONT_PACKAGES), licence, None) for i in range(count)]


def pattern_sources(count: int = DRAWN_PATTERNS) -> list[Source]:
    return [Source(f"drawn:pattern-{i:04d}", "pattern", "drawn", "drawn by this project", None) for i in range(count)]


# --- rendered pages -------------------------------------------------------------------------------------------
_SENTENCE = (
    "the quick brown fox jumps over a lazy dog while pricing plans for teams update every month and our new "
    "release brings faster search better privacy controls shipping worldwide contact support sign in today "
    "order summary total checkout subscribe newsletter learn more download report quarterly revenue growth"
)
WORDS = _SENTENCE.split()


def _fonts() -> list[Path]:
    fonts = sorted(p for d in FONT_DIRS for p in Path(d).glob("*.ttf"))
    if not fonts:
        raise MissingImagery(f"no fonts in {', '.join(FONT_DIRS)}: install {' '.join(FONT_PACKAGES)}")
    return fonts


def _colour(rng: random.Random, light: bool | None = None) -> tuple[int, int, int]:
    if light is None:
        return tuple(rng.randrange(256) for _ in range(3))  # type: ignore[return-value]
    low, high = (190, 256) if light else (0, 90)
    return tuple(rng.randrange(low, high) for _ in range(3))  # type: ignore[return-value]


def render_page(seed: int, fonts: Sequence[Path]) -> Image.Image:
    """A screenshot-like page or an illustration: text in real fonts, flat colour, buttons, a chart, a logo."""
    rng = random.Random(seed)
    width, height = rng.choice([(1280, 800), (1024, 768), (800, 1200), (1440, 900), (600, 600)])
    dark = rng.random() < 0.25
    image = Image.new("RGB", (width, height), _colour(rng, light=not dark))
    draw = ImageDraw.Draw(image)
    ink = _colour(rng, light=dark)
    draw.rectangle([0, 0, width, rng.randrange(40, 90)], fill=_colour(rng))  # header bar
    y = rng.randrange(100, 140)
    while y < height - 40:
        block = rng.random()
        font = ImageFont.truetype(str(rng.choice(fonts)), rng.choice([11, 13, 14, 16, 20, 28, 40]))
        if block < 0.55:  # a paragraph
            for _ in range(rng.randrange(1, 6)):
                line = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 14)))
                draw.text((rng.randrange(10, 60), y), line, fill=ink, font=font)
                y += int(font.size * 1.5)
        elif block < 0.7:  # buttons
            x = rng.randrange(10, 80)
            for _ in range(rng.randrange(1, 4)):
                w = rng.randrange(80, 220)
                draw.rounded_rectangle([x, y, x + w, y + 40], radius=rng.randrange(0, 20), fill=_colour(rng))
                draw.text((x + 12, y + 10), rng.choice(WORDS).title(), fill=_colour(rng, light=True), font=font)
                x += w + 20
            y += 60
        elif block < 0.85:  # a bar chart
            x0, base = rng.randrange(20, 100), y + rng.randrange(80, 200)
            for k in range(rng.randrange(3, 12)):
                h = rng.randrange(10, base - y)
                draw.rectangle([x0 + 30 * k, base - h, x0 + 30 * k + 20, base], fill=_colour(rng))
            draw.line([x0 - 5, base, x0 + 360, base], fill=ink, width=2)
            y = base + 30
        else:  # a logo: shapes and a word
            r = rng.randrange(20, 60)
            cx = rng.randrange(r + 10, width - r - 10)
            draw.ellipse([cx - r, y, cx + r, y + 2 * r], fill=_colour(rng), outline=ink, width=rng.randrange(0, 5))
            draw.text((cx + r + 10, y + r // 2), rng.choice(WORDS).upper(), fill=ink, font=font)
            y += 2 * r + 30
    return image


def render_logo(seed: int, fonts: Sequence[Path]) -> Image.Image:
    """A logo on transparency (RGBA): a shape and a word, as PNG logos are served."""
    rng = random.Random(seed)
    size = rng.choice([96, 128, 200, 256])
    image = Image.new("RGBA", (size * 2, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle([4, 4, size - 4, size - 4], radius=rng.randrange(0, size // 2), fill=(*_colour(rng), 255))
    font = ImageFont.truetype(str(rng.choice(fonts)), size // 3)
    draw.text((size + 6, size // 3), rng.choice(WORDS).title(), fill=(*_colour(rng, light=False), 255), font=font)
    return image


# --- drawn patterns -------------------------------------------------------------------------------------------
PATTERNS = ("stripes", "checks", "halftone", "moire", "hatching", "dither", "rings")


def _grating(x: np.ndarray, y: np.ndarray, period: float, angle: float, duty: float, soft: bool) -> np.ndarray:
    """A line grating in [0, 1]: hard-edged bars (duty = bar share of a period) or a sinusoid."""
    phase = (x * math.cos(angle) + y * math.sin(angle)) / period
    if soft:
        return 0.5 + 0.5 * np.cos(2 * math.pi * phase)
    return ((phase % 1.0) < duty).astype(np.float32)


def _pattern_field(name: str, x: np.ndarray, y: np.ndarray, rng: random.Random) -> np.ndarray:
    """The pattern's intensity in [0, 1] on the pixel grid (x, y)."""
    period = math.exp(rng.uniform(math.log(2), math.log(40)))
    angle = rng.choice([0.0, math.pi / 2, math.pi / 4, rng.uniform(0, math.pi)])
    soft = rng.random() < 0.3
    duty = rng.uniform(0.2, 0.8)
    if name == "stripes":
        return _grating(x, y, period, angle, duty, soft)
    if name == "checks":  # checkerboard, gingham or plaid: two gratings across each other
        a = _grating(x, y, period, angle, duty, soft)
        b = _grating(x, y, period * rng.uniform(0.5, 2), angle + math.pi / 2, duty, soft)
        return np.abs(a - b) if rng.random() < 0.5 else 0.5 * (a + b)
    if name == "halftone":  # a screen of dots whose size follows a smooth tone
        cell = max(period, 3.0)
        u = x * math.cos(angle) + y * math.sin(angle)
        v = -x * math.sin(angle) + y * math.cos(angle)
        du, dv = (u / cell) % 1.0 - 0.5, (v / cell) % 1.0 - 0.5
        wave_x, phase, wave_y = x.shape[1] * rng.uniform(0.2, 1), rng.uniform(0, 6), x.shape[0] * rng.uniform(0.2, 1)
        tone = 0.5 + 0.5 * np.sin(x / wave_x * 2 * math.pi + phase) * np.cos(y / wave_y * 2 * math.pi)
        return (np.sqrt(du**2 + dv**2) < 0.6 * np.sqrt(tone)).astype(np.float32)
    if name == "moire":  # two fine gratings a little apart in angle and period
        a = _grating(x, y, period, angle, duty, soft)
        b = _grating(x, y, period * rng.uniform(0.9, 1.1), angle + rng.uniform(-0.15, 0.15), duty, soft)
        return a * b
    if name == "hatching":  # lines one way, then the other where the tone is dark
        tone = (x / x.shape[1] + y / x.shape[0]) / 2
        a = _grating(x, y, period, angle, 0.25, False)
        b = _grating(x, y, period, angle + math.pi / 2, 0.25, False) * (tone > 0.5)
        return 1 - np.maximum(a, b)
    if name == "dither":  # an ordered (Bayer 4x4) dither of a gradient, scaled up by whole pixels
        bayer = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]], dtype=np.float32) / 16
        scale = rng.choice([1, 1, 2, 3])
        xi, yi = (x // scale).astype(int), (y // scale).astype(int)
        extent = abs(math.cos(angle)) * x.shape[1] + abs(math.sin(angle)) * x.shape[0]
        tone = (x * math.cos(angle) + y * math.sin(angle)) / extent
        return (tone % 1.0 > bayer[yi % 4, xi % 4]).astype(np.float32)
    cx, cy = rng.uniform(0, x.shape[1]), rng.uniform(0, x.shape[0])  # rings: a grating along the radius
    return _grating(np.hypot(x - cx, y - cy), np.zeros_like(x), period, 0.0, duty, soft)


def render_pattern(seed: int) -> Image.Image:
    """A regular pattern as fabric, packaging, print screens and web backgrounds show it: two colours (or a
    tint that drifts across it) through one of ``PATTERNS``, sometimes drawn at twice the size and halved
    (anti-aliased edges), sometimes with a flat panel of text-free colour over part of it."""
    rng = random.Random(seed)
    width, height = rng.choice([(1280, 800), (1024, 768), (800, 1200), (1600, 1000), (700, 700)])
    supersample = 2 if rng.random() < 0.5 else 1
    y, x = np.mgrid[0 : height * supersample, 0 : width * supersample].astype(np.float32) / supersample
    field = _pattern_field(PATTERNS[seed % len(PATTERNS)], x, y, rng)[..., None]
    ink, paper = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    if rng.random() < 0.3:  # a tint that drifts across the picture, as dyed cloth and printed stock do
        paper = paper + (x[..., None] / x.shape[1] - 0.5) * rng.uniform(-80, 80)
    pixels = np.clip(paper + (ink - paper) * field, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if supersample > 1:
        image = image.resize((width, height), Image.LANCZOS)
    if rng.random() < 0.3:
        draw = ImageDraw.Draw(image)
        left, top = rng.randrange(width // 2), rng.randrange(height // 2)
        draw.rectangle([left, top, left + rng.randrange(80, width // 2), top + rng.randrange(60, height // 2)],
                       fill=_colour(rng))  # fmt: skip
    return image


# --- cutting and delivering -------------------------------------------------------------------------------------
def load_source(source: Source, fonts: Sequence[Path]) -> Image.Image:
    if source.path is None:
        seed = int(source.id.rsplit("-", 1)[1])
        if source.kind == "pattern":
            return render_pattern(seed)
        return render_logo(seed, fonts) if seed % 5 == 4 else render_page(seed, fonts)
    with Image.open(source.path) as image:
        image = ImageOps.exif_transpose(image)
        image.load()
        return image.convert("RGBA") if image.mode in ("RGBA", "LA", "P", "PA") else image.convert("RGB")


def random_crop(image: Image.Image, rng: random.Random) -> Image.Image:
    """A crop of random aspect and scale, resized (Lanczos, never up) to 64-1024 px on its longest side."""
    width, height = image.size
    aspect = rng.choice([1.0, 4 / 3, 3 / 4, 16 / 9, 3 / 2, 2 / 3])
    scale = rng.uniform(0.25, 1.0)
    crop_w = min(width, max(16, round(math.sqrt(scale * width * height * aspect))))
    crop_h = min(height, max(16, round(crop_w / aspect)))
    left, top = rng.randrange(width - crop_w + 1), rng.randrange(height - crop_h + 1)
    crop = image.crop((left, top, left + crop_w, top + crop_h))
    target = round(math.exp(rng.uniform(math.log(64), math.log(1024))))
    longest = max(crop.size)
    if target < longest:
        factor = target / longest
        crop = crop.resize((max(1, round(crop_w * factor)), max(1, round(crop_h * factor))), Image.LANCZOS)
    return crop


def save(image: Image.Image, fmt: str, quality: int | None = None) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image = image.convert("RGB") if image.mode != "RGB" else image
        image.save(buffer, "JPEG", quality=quality, subsampling=subsampling_for(quality))
    elif fmt == "WEBP":
        image.save(buffer, "WEBP", quality=quality)
    else:
        image.save(buffer, "PNG", optimize=False)
    return buffer.getvalue()


def subsampling_for(quality: int | None) -> int:
    """libjpeg's habit, kept by most encoders: 4:4:4 at high quality, 4:2:0 below 90."""
    return 0 if quality is not None and quality >= 90 else 2


def deliver(image: Image.Image, kind: str, rng: random.Random) -> tuple[bytes, str, list[str]]:
    """A history as the web gives it: camera-like first save for photos, then the format it is served in."""
    history: list[str] = []
    if kind == "wallpaper" and image.mode == "RGB" and rng.random() < 0.6:
        quality = rng.randrange(85, 99)
        with Image.open(io.BytesIO(save(image, "JPEG", quality))) as first:
            image = first.convert("RGB")
        history.append(f"camera-jpeg q{quality}")
    served = rng.random()
    if served < 0.55:
        quality = rng.randrange(60, 91)
        history.append(f"web-jpeg q{quality}")
        return save(image, "JPEG", quality), "JPEG", history
    if served < 0.8:
        history.append("png")
        return save(image, "PNG"), "PNG", history
    quality = rng.randrange(70, 91)
    history.append(f"webp q{quality}")
    return save(image, "WEBP", quality), "WEBP", history


def crops_of(source: Source) -> int:
    return CROPS_PER_SOURCE[source.kind] * (CALIBRATION_CROP_FACTOR if source.split == "calibration" else 1)


def images_of(source: Source, fonts: Sequence[Path], crops: int | None = None) -> Iterator[tuple[bytes, WebImage]]:
    rng = random.Random(int(hashlib.sha256(f"{CROP_SEED}:{source.id}".encode()).hexdigest()[:12], 16))
    picture = load_source(source, fonts)
    if min(picture.size) < MIN_SIDE:
        return
    count = crops_of(source)
    for k in range(min(count, crops or count)):
        crop = random_crop(picture, rng) if source.kind != "stamp" or k else picture
        if source.kind == "stamp" and max(crop.size) > 1024:
            crop = random_crop(crop, rng)
        data, fmt, history = deliver(crop, source.kind, rng)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.id)[:80]
        file = f"{source.split}/{name}-{k:02d}.{fmt.lower()}"
        yield data, WebImage(file, source.split, source.id, source.kind, source.package, source.licence,
                             crop.width, crop.height, fmt, history)  # fmt: skip


# --- the set ------------------------------------------------------------------------------------------------------
def build(out: Path, *, install: bool = True, limit: int | None = None, progress: bool = True) -> Path:
    """Build the set into ``out`` (idempotent: a finished build of this version is kept).  ``limit`` caps
    the sources per kind and split, and the crops per source at ``LIMITED_CROPS`` (a small set for tests)."""
    marker = out / "BUILT"
    if marker.is_file() and marker.read_text().strip() == f"{BUILD_VERSION} limit={limit}":
        return out
    missing = missing_packages()
    if missing and install:
        install_packages(missing)
    elif missing:
        raise MissingImagery(f"install the Debian packages {' '.join(missing)} (apt-get install, as root)")
    fonts = _fonts()
    sources = packaged_sources() + rendered_sources() + pattern_sources()
    if limit is not None:
        groups: dict[tuple[str, str], list[Source]] = {}
        for source in sources:
            groups.setdefault((source.kind, source.split), []).append(source)
        sources = [s for group in groups.values() for s in group[:limit]]
    if out.exists():
        shutil.rmtree(out)
    for split in SPLITS:
        (out / split).mkdir(parents=True)
    records = []
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("building web images", total=len(sources))
        for source in sources:
            for data, record in images_of(source, fonts, LIMITED_CROPS if limit is not None else None):
                (out / record.file).write_bytes(data)
                records.append(record)
            bar.advance(task)
    with (out / "manifest.jsonl").open("w") as manifest:
        for record in records:
            manifest.write(json.dumps(asdict(record)) + "\n")
    marker.write_text(f"{BUILD_VERSION} limit={limit}\n")
    return out


def load_manifest(folder: Path, split: str | None = None, kinds: Sequence[str] | None = None) -> list[WebImage]:
    path = folder / "manifest.jsonl"
    if not path.is_file():
        raise MissingImagery(
            f"no web-image set at {folder}: build it with `python -m worker.research.web_images build`"
        )
    records = [WebImage(**json.loads(line)) for line in path.read_text().splitlines()]
    return [r for r in records if (split is None or r.split == split) and (kinds is None or r.kind in kinds)]


def summary(folder: Path) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
    for record in load_manifest(folder):
        counts[record.split][record.kind] += 1
    return {split: dict(counter) for split, counter in counts.items()}


def add_dir_option(parser: argparse.ArgumentParser) -> None:
    """The ``--web-dir`` option of the commands that read the set."""
    parser.add_argument(
        "--web-dir", type=Path, default=DEFAULT_DIR, help="web-image set (python -m worker.research.web_images build)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.research.web_images", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "summary"))
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="the set's folder (default: %(default)s)")
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing missing packages")
    parser.add_argument("--limit", type=int, help="at most this many sources per kind and split (a small set)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args.out, install=not args.no_install, limit=args.limit)
        print(json.dumps(summary(args.out), indent=2))
    except MissingImagery as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
