"""A local demo site for ``scanner demo``: pages of CIFAR-10 test images, some perturbed by PGD against the
bundled *standard* model, placed the ways real sites place images (plain ``img``, ``srcset``, lazy loading far
below the fold, CSS backgrounds, images inserted by JavaScript after load), a page of ordinary photos at their
own size (half of them attacked through the resize and served as JPEG), plus robots.txt and a sitemap.

The site's ``manifest.json`` records which image is which (true label, perturbed or not), so the demo can
score the crawl's verdicts against the truth.
"""

from __future__ import annotations

import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.attacks import parse_eps, pgd
from training.bundle import load
from training.data import load_splits, seeded_subset, to_float

PLACEMENTS = ("img", "srcset", "background", "lazy", "inserted")
RENDER_PX = 128  # CIFAR images are 32 px: shown at 128 px, as a thumbnail grid would


@dataclass(frozen=True)
class DemoImage:
    file: str
    page: str
    label: str
    perturbed: bool
    placement: str


def _png(pixels: torch.Tensor) -> bytes:
    array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, "PNG")
    return buffer.getvalue()


PHOTO_LABEL = "(a photo: no CIFAR-10 class)"


def demo_photos(web_dir: Path, standard_dir: Path, n: int, eps: str, seed: int) -> list[tuple[bytes, bool]]:
    """``n`` ordinary photos of the web-image set's test split as served (JPEG/PNG/WebP files), every second one
    attacked through the resize (PGD against the standard model, at the photo's own size) and re-saved as
    JPEG quality 90, as a site would serve it."""
    import random

    from worker.research import delivery, web_images
    from worker.research.native_attacks import NativeAttack

    records = [r for r in web_images.load_manifest(web_dir, "test") if r.kind in ("wallpaper", "stamp")]
    records = random.Random(seed).sample(records, min(n, len(records)))
    standard = load(standard_dir)
    attack = NativeAttack("resize", "pgd", round(parse_eps(eps) * 255), steps=10)
    torch.manual_seed(seed)
    photos = []
    for i, record in enumerate(records):
        data = (web_dir / record.file).read_bytes()
        if i % 2 == 1:
            with Image.open(io.BytesIO(data)) as image:
                pixels = np.asarray(image.convert("RGB"))
            attacked = attack.run(standard.model, pixels, standard.metadata["input_size"], torch.device("cpu"))
            buffer = io.BytesIO()
            delivery.from_array(attacked).save(buffer, "JPEG", quality=90)
            data = buffer.getvalue()
        photos.append((data, i % 2 == 1))
    return photos


def build_demo_site(
    out: Path,
    data: Path,
    standard_dir: Path,
    pages: int = 4,
    per_page: int = 5,
    eps: str = "8/255",
    seed: int = 0,
    photos: list[tuple[bytes, bool]] | None = None,
) -> list[DemoImage]:
    """Write the site into ``out``; every second image is perturbed (PGD-20 against the standard model).
    ``photos`` (bytes as served, attacked or not) go on a page of their own, ``photos.html``."""
    n = pages * per_page
    standard = load(standard_dir)
    test = seeded_subset(load_splits("cifar10", data).test, n, seed)
    x, y = to_float(test.images), test.labels
    n = len(y)  # a small data set may hold fewer test images than asked for
    torch.manual_seed(seed)
    perturbed = torch.arange(n) % 2 == 1
    x[perturbed] = pgd(standard.model, x[perturbed], y[perturbed], parse_eps(eps), 2 / 255, 20)
    (out / "img").mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n):
        page = f"page-{i // per_page + 1}.html"
        name = f"img/{i:03d}.png"
        (out / name).write_bytes(_png(x[i]))
        placement = PLACEMENTS[i % per_page % len(PLACEMENTS)]
        images.append(DemoImage(name, page, standard.classes[int(y[i])], bool(perturbed[i]), placement))
    for k, (photo, attacked) in enumerate(photos or []):
        name = f"img/photo-{k:02d}.{_extension(photo)}"
        (out / name).write_bytes(photo)
        images.append(DemoImage(name, "photos.html", PHOTO_LABEL, attacked, "img"))
    _write_pages(out, images, pages)
    (out / "manifest.json").write_text(json.dumps([image.__dict__ for image in images], indent=1))
    return images


def _extension(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[str(image.format)]


def _write_pages(out: Path, images: list[DemoImage], pages: int) -> None:
    links = "".join(f'<li><a href="page-{p}.html">Gallery {p}</a></li>' for p in range(1, pages + 1))
    photos = [image for image in images if image.page == "photos.html"]
    if photos:
        links += '<li><a href="photos.html">Photos</a></li>'
        body = "".join(f'<figure><img src="{html.escape(p.file)}" width="320" alt=""></figure>' for p in photos)
        (out / "photos.html").write_text(_html("Photos", '<p><a href="index.html">Home</a></p>' + body))
    (out / "index.html").write_text(_html("Demo shop", f"<p>Galleries of product photos.</p><ul>{links}</ul>"))
    for p in range(1, pages + 1):
        page = f"page-{p}.html"
        body = "".join(_figure(image) for image in images if image.page == page)
        nav = f'<p><a href="index.html">Home</a> <a href="page-{p % pages + 1}.html">Next gallery</a></p>'
        (out / page).write_text(_html(f"Gallery {p}", nav + body + _LAZY_AND_INSERT_SCRIPT))
    (out / "robots.txt").write_text("User-agent: *\nDisallow: /private/\nSitemap: /sitemap.xml\n")
    urls = "".join(f"<url><loc>/page-{p}.html</loc></url>" for p in range(1, pages + 1))
    if photos:
        urls += "<url><loc>/photos.html</loc></url>"
    (out / "sitemap.xml").write_text(
        f'<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}'
        "</urlset>"
    )


def _figure(image: DemoImage) -> str:
    src, size = html.escape(image.file), f'width="{RENDER_PX}" height="{RENDER_PX}"'
    tags = {
        "img": f'<img src="{src}" {size} alt="">',
        "srcset": f'<img src="img/placeholder.png" srcset="{src} 1x, {src} 2x" {size} alt="">',
        "background": f'<div style="width:{RENDER_PX}px;height:{RENDER_PX}px;background:url({src}) center/cover">'
        "</div>",
        "lazy": f'<div style="height:1400px"></div><img data-src="{src}" class="lazy" {size} alt="">',
        "inserted": f'<div class="insert-later" data-src="{src}"></div>',
    }
    return f"<figure>{tags[image.placement]}</figure>"


# Lazy images load only when scrolled into view; some images are added one moment after load.
_LAZY_AND_INSERT_SCRIPT = f"""
<script>
const observer = new IntersectionObserver(entries => entries.forEach(entry => {{
  if (entry.isIntersecting) {{ entry.target.src = entry.target.dataset.src; observer.unobserve(entry.target); }}
}}));
document.querySelectorAll("img.lazy").forEach(img => observer.observe(img));
window.addEventListener("load", () => setTimeout(() => {{
  document.querySelectorAll(".insert-later").forEach(div => {{
    const img = document.createElement("img");
    img.src = div.dataset.src; img.width = {RENDER_PX}; img.height = {RENDER_PX};
    div.appendChild(img);
  }});
}}, 300));
</script>"""


def _html(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
