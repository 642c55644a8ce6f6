"""Finding the images a person sees on a rendered page (and the page's links), with one JavaScript call per frame.

What people miss when they read ``img[src]`` from HTML: the browser chooses from ``srcset``/``<picture>``
(``currentSrc``; the plain ``src`` is often a placeholder), lazy loaders keep the real URL in ``data-src``/
``data-srcset``, pictures come from CSS (``background-image``, ``border-image-source``, ``mask-image``,
``list-style-image``, ``::before``/``::after`` content), from ``video[poster]`` and SVG ``<image>``, from
``data:`` URLs, and from script after load. So the page is asked, after rendering, what it shows: computed
styles rather than stylesheets, ``currentSrc`` rather than attributes, open shadow roots and child frames
included. The JavaScript lives here as a string so the package needs no data files.

Sizes: the rendered box (``getBoundingClientRect``) and, for ``<img>``, the natural size. The size rule
(``keep_by_size``) is applied by the caller once the natural size of CSS images is known from their bytes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

MAX_FRAMES = 20
MAX_IMAGES_PER_PAGE = 2000
MAX_LINKS_PER_PAGE = 5000
INSERTED_KEY = "robust-image-scanner.inserted"

# Runs in every frame before the page's own scripts: remembers elements added after the load event, so images
# inserted by script can be told apart ("inserted"). A WeakSet under a registry symbol: no visible global.
INIT_SCRIPT = r"""
(() => {
  const key = Symbol.for('__INSERTED_KEY__');
  if (window[key]) return;
  const seen = new WeakSet();
  Object.defineProperty(window, key, {value: seen});
  const start = () => new MutationObserver((records) => {
    for (const record of records) for (const node of record.addedNodes) {
      if (node.nodeType !== 1) continue;
      seen.add(node);
      for (const inner of node.querySelectorAll('img, picture, video, image')) seen.add(inner);
    }
  }).observe(document, {childList: true, subtree: true});
  if (document.readyState === 'complete') start(); else window.addEventListener('load', start, {once: true});
})();
""".replace("__INSERTED_KEY__", INSERTED_KEY)

EXTRACT_JS = r"""
(opts) => {
  const minSize = opts.minSize, found = new Map(), links = new Set();
  const inserted = window[Symbol.for('__INSERTED_KEY__')];
  const CSS = [['background-image', 'css-background'], ['border-image-source', 'css-border-image'],
               ['mask-image', 'css-mask'], ['-webkit-mask-image', 'css-mask'], ['list-style-image', 'css-list-style']];
  const LAZY = ['data-src', 'data-lazy-src', 'data-original', 'data-lazy'];
  const LAZY_SETS = ['data-srcset', 'data-lazy-srcset'];

  const abs = (u) => { try { return new URL(u, document.baseURI).href; } catch (e) { return null; } };
  const num = (v) => (Number.isFinite(v) && v > 0 ? Math.round(v) : null);
  const box = (el) => { const r = el.getBoundingClientRect(); return [num(r.width), num(r.height)]; };
  const bigger = (a, b) => (a === null ? b : b === null ? a : Math.max(a, b));

  const add = (raw, kind, size, natural) => {
    if (!raw || found.size >= opts.maxImages) return;
    const url = /^data:/i.test(raw) ? raw : abs(raw.trim());
    if (!url || !(/^https?:/i.test(url) || /^data:image\//i.test(url))) return;
    const [w, h] = size || [null, null], [nw, nh] = natural || [null, null];
    const old = found.get(url);
    if (old) {
      old.width = bigger(old.width, w); old.height = bigger(old.height, h);
      old.naturalWidth = bigger(old.naturalWidth, nw); old.naturalHeight = bigger(old.naturalHeight, nh);
      return;
    }
    found.set(url, {url, kind: url.startsWith('data:') ? 'data-url' : kind, width: w, height: h,
                    naturalWidth: nw, naturalHeight: nh});
  };

  // srcset per the HTML parsing rules (a URL may contain commas); the candidate with the largest descriptor.
  const bestOf = (srcset) => {
    let best = null, score = -1, i = 0;
    const s = srcset || '';
    while (i < s.length) {
      while (i < s.length && /[\s,]/.test(s[i])) i++;
      let j = i;
      while (j < s.length && !/\s/.test(s[j])) j++;
      let url = s.slice(i, j), desc = '';
      i = j;
      if (/,$/.test(url)) url = url.replace(/,+$/, '');
      else { let k = i; while (k < s.length && s[k] !== ',') k++; desc = s.slice(i, k).trim(); i = k + 1; }
      const value = parseFloat(desc) || 1;
      if (url && value > score) { best = url; score = value; }
    }
    return best;
  };
  const lazyUrl = (el) => {
    for (const a of LAZY_SETS) { const b = bestOf(el.getAttribute(a)); if (b) return abs(b); }
    for (const a of LAZY) { const v = el.getAttribute(a); if (v) return abs(v); }
    return null;
  };
  // What the browser would pick for an image that has not started loading (hidden, deferred).
  const pending = (img) => {
    const picture = img.closest('picture');
    if (picture) for (const source of picture.querySelectorAll('source')) {
      if (source.media && !matchMedia(source.media).matches) continue;
      const best = bestOf(source.srcset || source.getAttribute('data-srcset'));
      if (best) return abs(best);
    }
    const best = bestOf(img.getAttribute('srcset'));
    return best ? abs(best) : img.src || null;
  };
  const imgKind = (img) => {
    if (inserted && inserted.has(img)) return 'inserted';
    if (img.closest('picture')) return 'picture';
    if (img.getAttribute('srcset')) return 'srcset';
    if (img.loading === 'lazy' || lazyUrl(img)) return 'lazy';
    return 'img';
  };
  const visitImg = (img) => {
    const natural = [num(img.naturalWidth), num(img.naturalHeight)], size = box(img);
    const started = img.currentSrc || (img.complete ? img.src : '');
    const current = started || pending(img);
    const lazy = lazyUrl(img);
    const tiny = natural[0] !== null && natural[0] < minSize && natural[1] < minSize;
    const placeholder = lazy && lazy !== current && (!current || /^data:/i.test(current) || tiny);
    if (current && !placeholder) add(current, imgKind(img), size, natural);
    if (lazy && lazy !== current) add(lazy, 'lazy', size, null);
  };
  const urlsIn = (value) => {
    const out = [];
    if (!value || value === 'none' || value === 'normal') return out;
    const re = /url\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([^)]*?))\s*\)/g;
    let m;
    while ((m = re.exec(value))) out.push((m[1] ?? m[2] ?? m[3] ?? '').replace(/\\(.)/g, '$1'));
    return out;
  };
  const visitStyles = (el) => {
    const style = getComputedStyle(el);
    for (const [prop, kind] of CSS) for (const u of urlsIn(style.getPropertyValue(prop))) add(u, kind, box(el), null);
    for (const pseudo of ['::before', '::after']) {
      const ps = getComputedStyle(el, pseudo);
      const content = ps.getPropertyValue('content');
      if (!content || content === 'none' || content === 'normal') continue;
      const size = [num(parseFloat(ps.width)), num(parseFloat(ps.height))];
      for (const u of urlsIn(content)) add(u, 'css-pseudo', size, null);
      for (const [prop] of CSS) for (const u of urlsIn(ps.getPropertyValue(prop))) add(u, 'css-pseudo', size, null);
    }
  };
  const visit = (el) => {
    const tag = el.localName;
    if (tag === 'img') visitImg(el);
    else if (tag === 'video' && el.poster) add(el.poster, 'poster', box(el), null);
    else if (tag === 'image' && el.href && el.href.baseVal) add(el.href.baseVal, 'svg-image', box(el), null);
    else if (tag === 'input' && el.type === 'image' && el.src) add(el.src, 'img', box(el), null);
    else if (opts.links && (tag === 'a' || tag === 'area') && el.hasAttribute('href')) {
      const href = typeof el.href === 'string' ? el.href : abs(el.getAttribute('href'));
      if (href && links.size < opts.maxLinks) links.add(href);
    }
    visitStyles(el);
  };
  let budget = opts.maxElements;
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (budget-- <= 0) return;
      visit(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return {images: [...found.values()], links: [...links]};
}
""".replace("__INSERTED_KEY__", INSERTED_KEY)


@dataclass(frozen=True)
class Candidate:
    """An image reference found in the page, before its bytes are known."""

    url: str
    kind: str
    width: int | None
    height: int | None
    natural_width: int | None
    natural_height: int | None


@dataclass(frozen=True)
class Extraction:
    images: list[Candidate]
    links: list[str]


def keep_by_size(rendered: tuple[int | None, int | None], natural: tuple[int | None, int | None], minimum: int) -> bool:
    """Keep unless every known size is below ``minimum`` in a dimension; with no size known, keep."""
    known = [(w, h) for w, h in (rendered, natural) if w and h]
    return not known or any(w >= minimum and h >= minimum for w, h in known)


def _candidates(raw: list[dict[str, object]]) -> list[Candidate]:
    fields = ("url", "kind", "width", "height", "naturalWidth", "naturalHeight")
    return [Candidate(*(item.get(f) for f in fields)) for item in raw]  # type: ignore[arg-type]


async def extract(page: Page, min_size: int) -> Extraction:
    """Images of the page and its frames (merged by URL, first kind wins) and the main frame's links."""
    options = {"minSize": min_size, "maxImages": MAX_IMAGES_PER_PAGE, "maxLinks": MAX_LINKS_PER_PAGE,
               "maxElements": 50_000}
    main = await page.main_frame.evaluate(EXTRACT_JS, {**options, "links": True})
    images = _candidates(main["images"])
    for frame in page.frames[1:MAX_FRAMES]:
        with contextlib.suppress(PlaywrightError):  # detached or navigating frames are skipped
            images += _candidates((await frame.evaluate(EXTRACT_JS, {**options, "links": False}))["images"])
    merged: dict[str, Candidate] = {}
    for image in images:
        merged.setdefault(image.url, image)
    return Extraction(list(merged.values())[:MAX_IMAGES_PER_PAGE], list(main["links"]))
