"""Which fingerprint the query shield uses, chosen by measurement on real images.

What it measures, for each candidate ``Spec`` of ``scanner.shield.fingerprint``:

* attack pairs: how often an image matches itself after the changes an attack makes between queries:
  random-sign L-inf 8/255 (every value moved by +-8: the farthest any query of an 8/255 attack lies from the
  clean image), two such draws against each other (16/255 apart: the farthest two queries of one attack lie),
  and Gaussian L2 noise of norm 0.5 at 32x32x3 (the CIFAR-10 L2 budget; the same per-value RMS at other
  sizes);
* attack sequences: the queries of a Square L-inf 8/255 attack (the proposal distribution and the schedule of
  torchattacks' Square, ``p_init`` 0.8 and 0.05, 5,000-query schedule, the model replaced by a coin that
  accepts 20% of the proposals) and of an SPSA-like gradient estimate (pairs x +- 0.01 * Bernoulli, sign
  steps of 1/255 inside the 8/255 ball): for each query, how many earlier queries of the run it matches, and
  at which query the first one matches at least K earlier ones;
* false matches between different pictures: every pair of CIFAR-10 test images (JPEG q75 as stored), and every
  pair of photos (the wallpaper packages) and rendered pages, logos and drawn patterns
  (``worker.research.web_images``), at 512 px on the long side;
* benign variants of one photo against its 512 px copy: resized (1024, 320, 160 px), a 96 px thumbnail,
  re-encoded (JPEG q60/q85, WebP q80, PNG), cropped (centre 90%, a corner 80%, shifted 8 px), and a simulated
  burst from one camera (shifted 2-12 px, exposure +-3%, sensor noise sigma 2, JPEG q90).

Photos are split by ``web_images``' source hash; the candidates are compared on the train and calibration
splits and the test split is reported apart, so the choice does not fit the images it is judged on.

Usage
    python benchmarks/shield_fingerprint.py [--cifar 1000] [--sequences 40] [--queries 300]
        [--out results/shield_fingerprint.json]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import tarfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from scanner.shield.fingerprint import DEFAULT, Spec, fingerprint, shared
from worker.engine.imaging import to_rgb

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
if not CIFAR.exists():
    CIFAR = Path("/work/shared/data/cifar10-jpeg.tar.gz")
EPS = 8

WINDOWS = Spec(
    kind="windows", size=32, colour=True, step=50, window=20, top=50, threshold=25
)  # Blacklight's CIFAR values
CANDIDATES: list[Spec] = [
    DEFAULT,
    DEFAULT.with_(sampled=0),  # every pixel averaged
    DEFAULT.with_(min_energy=0.0),  # flat images fingerprinted too
    WINDOWS,
    WINDOWS.with_(window=10),
    WINDOWS.with_(size=64, colour=False),
]
THRESHOLDS = {"windows": list(range(5, 51, 5)), "phash": list(range(8, 16))}


# --- images -----------------------------------------------------------------------------------------------------
def cifar_test(count: int) -> list[np.ndarray]:
    """``count`` CIFAR-10 test images, spread over the classes (the tar is read in stream order)."""
    per_class = math.ceil(count / 10)
    taken: dict[str, list[np.ndarray]] = defaultdict(list)
    with tarfile.open(CIFAR) as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) < 3 or parts[-3] != "test" or len(taken[parts[-2]]) >= per_class:
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            taken[parts[-2]].append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return [image for images in taken.values() for image in images][:count]


def to_long_side(image: Image.Image, side: int) -> Image.Image:
    factor = side / max(image.size)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


def web_pictures(per_kind: dict[str, int]) -> dict[str, list[tuple[str, str, Image.Image]]]:
    """(split -> [(source id, kind, 512 px RGB image)]): the packaged photos (``web_images``' sources, one per
    distinct picture, at most ``per_kind`` of each kind), rendered pages and logos, drawn patterns."""
    from worker.research import web_images

    fonts = web_images._fonts()
    installed = [p for p in web_images.PACKAGES if Path(f"/usr/share/doc/{p}/copyright").is_file()]
    packages = {p: web_images.PACKAGES[p] for p in installed}
    original, web_images.PACKAGES = web_images.PACKAGES, packages
    try:
        sources = web_images.packaged_sources()
    finally:
        web_images.PACKAGES = original
    sources += web_images.rendered_sources(per_kind.get("page", 60)) + web_images.pattern_sources(
        per_kind.get("pattern", 60)
    )
    random.Random(0).shuffle(sources)  # a fair sample of each kind, not the alphabet's first names
    taken: dict[str, int] = defaultdict(int)
    split: dict[str, list[tuple[str, str, Image.Image]]] = defaultdict(list)
    for source in sources:
        if taken[source.kind] >= per_kind.get(source.kind, 10**9):
            continue
        taken[source.kind] += 1
        image = to_rgb(web_images.load_source(source, fonts))
        split["test" if source.split == "test" else "choice"].append((source.id, source.kind, to_long_side(image, 512)))
    return split


# --- perturbations ----------------------------------------------------------------------------------------------
def random_sign(x: np.ndarray, rng: np.random.Generator, eps: int = EPS) -> np.ndarray:
    return np.clip(x.astype(np.int16) + eps * rng.choice([-1, 1], size=x.shape), 0, 255).astype(np.uint8)


def gaussian_l2(x: np.ndarray, rng: np.random.Generator, norm_at_cifar: float = 0.5) -> np.ndarray:
    rms = norm_at_cifar / math.sqrt(32 * 32 * 3) * 255  # the same per-value RMS as L2 0.5 at 32x32x3
    noise = rng.normal(0, 1, size=x.shape)
    noise *= rms * math.sqrt(noise.size) / np.linalg.norm(noise)
    return np.clip(np.round(x + noise), 0, 255).astype(np.uint8)


def square_p(it: int, p_init: float, n_queries: int = 5000) -> float:
    """torchattacks' Square ``p_selection``."""
    it = int(it / n_queries * 10000)
    for edge, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128)):
        if it <= edge:
            return p_init / divisor
    return p_init / (256 if it <= 8000 else 512)


def square_linf(x: np.ndarray, rng: np.random.Generator, queries: int, p_init: float) -> Iterator[np.ndarray]:
    """The queries of Square L-inf: vertical stripes first, then squares of a fresh sign per channel."""
    h, w, c = x.shape
    base = x.astype(np.int16)
    best = np.clip(base + EPS * rng.choice([-1, 1], size=(1, w, c)), 0, 255)
    yield best.astype(np.uint8)
    for it in range(1, queries):
        side = min(max(round(math.sqrt(square_p(it, p_init) * h * w)), 1), h - 1, w - 1)
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        new = best.copy()
        region = new[top : top + side, left : left + side]
        for _ in range(10):  # Square redraws until the square's values change
            sign = rng.choice([-1, 1], size=(1, 1, c))
            proposal = np.clip(base[top : top + side, left : left + side] + EPS * sign, 0, 255)
            if not np.array_equal(proposal, region):
                break
        new[top : top + side, left : left + side] = proposal
        yield new.astype(np.uint8)
        if rng.random() < 0.2:
            best = new


def spsa(x: np.ndarray, rng: np.random.Generator, queries: int) -> Iterator[np.ndarray]:
    """SPSA-like: pairs of queries x +- delta * Bernoulli (delta 0.01 ~ 2.55/255), a sign step of 1/255 each pair."""
    base = x.astype(np.float64)
    current = base.copy()
    for _ in range(queries // 2):
        direction = rng.choice([-1.0, 1.0], size=x.shape)
        for sign in (1.0, -1.0):
            yield np.clip(np.round(current + sign * 2.55 * direction), 0, 255).astype(np.uint8)
        current = np.clip(current + rng.choice([-1.0, 1.0], size=x.shape), base - EPS, base + EPS)
        current = np.clip(current, 0, 255)


def encode(image: Image.Image, fmt: str, quality: int | None = None) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": quality} if quality else {}))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def burst_frame(image: Image.Image, rng: random.Random) -> Image.Image:
    dx, dy = rng.choice([-1, 1]) * rng.randint(2, 12), rng.choice([-1, 1]) * rng.randint(2, 12)
    w, h = image.size
    frame = image.crop((12 + dx, 12 + dy, w - 12 + dx, h - 12 + dy)).resize((w, h), Image.Resampling.BICUBIC)
    pixels = np.asarray(frame, dtype=np.float64) * (1 + rng.uniform(-0.03, 0.03))
    pixels += np.random.default_rng(rng.randrange(2**32)).normal(0, 2, size=pixels.shape)
    return encode(Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)), "JPEG", 90)


VARIANTS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "resize-1024": lambda im, _: to_long_side(im, 1024),
    "resize-320": lambda im, _: to_long_side(im, 320),
    "resize-160": lambda im, _: to_long_side(im, 160),
    "thumbnail-96": lambda im, _: to_long_side(im, 96),
    "jpeg-q60": lambda im, _: encode(im, "JPEG", 60),
    "jpeg-q85": lambda im, _: encode(im, "JPEG", 85),
    "webp-q80": lambda im, _: encode(im, "WEBP", 80),
    "png": lambda im, _: encode(im, "PNG"),
    "crop-centre-90": lambda im, _: im.crop(
        (im.width // 20, im.height // 20, im.width * 19 // 20, im.height * 19 // 20)
    ),
    "crop-corner-80": lambda im, _: im.crop((0, 0, im.width * 4 // 5, im.height * 4 // 5)),
    "shift-8px": lambda im, _: im.crop((8, 0, im.width, im.height)),
    "burst": burst_frame,
}


# --- measuring --------------------------------------------------------------------------------------------------
Counts = dict[str, dict[str, list[int]]]  # spec name -> case -> shared values (or matched queries) per sample


def prints(specs: Sequence[Spec], image: np.ndarray | Image.Image) -> list[np.ndarray]:
    return [fingerprint(image, spec) for spec in specs]


def attack_pairs(specs: Sequence[Spec], images: Sequence[np.ndarray], seed: int) -> Counts:
    rng = np.random.default_rng(seed)
    out: Counts = {spec.named(): defaultdict(list) for spec in specs}
    for x in images:
        first, second = random_sign(x, rng), random_sign(x, rng)
        clean, a, b, l2 = (
            prints(specs, x),
            prints(specs, first),
            prints(specs, second),
            prints(specs, gaussian_l2(x, rng)),
        )
        for k, spec in enumerate(specs):
            cases = out[spec.named()]
            cases["linf8-random-sign"].append(shared(clean[k], a[k]))
            cases["linf8-vs-linf8"].append(shared(a[k], b[k]))
            cases["l2-0.5"].append(shared(clean[k], l2[k]))
    return out


def earlier_matches(fingerprints: Sequence[np.ndarray], threshold: int) -> list[int]:
    """For each fingerprint, how many earlier ones it matches (through an inverted index, as the shield does)."""
    index: dict[int, list[int]] = defaultdict(list)
    counts = []
    for t, values in enumerate(fingerprints):
        hits: dict[int, int] = defaultdict(int)
        for value in values.tolist():
            for earlier in index[value]:
                hits[earlier] += 1
            index[value].append(t)
        counts.append(sum(h >= threshold for h in hits.values()))
    return counts


def sequence_stats(specs: Sequence[Spec], runs: Iterator[Iterator[np.ndarray]]) -> dict[str, dict[str, object]]:
    """Per run: for each query the number of earlier queries it matches; summarised per K."""
    ks = (1, 3, 5, 10)
    first_at: dict[str, dict[int, list[int | None]]] = {s.named(): {k: [] for k in ks} for s in specs}
    matched_share: dict[str, list[float]] = {s.named(): [] for s in specs}
    for queries in runs:
        per_spec = list(zip(*(prints(specs, q) for q in queries), strict=True))
        for spec, fps in zip(specs, per_spec, strict=True):
            counts = earlier_matches(fps, spec.threshold)
            matched_share[spec.named()].append(float(np.mean([c >= 1 for c in counts[1:]])))
            for k in ks:
                first_at[spec.named()][k].append(next((t + 1 for t, c in enumerate(counts) if c >= k), None))
    summary: dict[str, dict[str, object]] = {}
    for name, per_k in first_at.items():
        summary[name] = {"queries_matching_an_earlier_one": round(float(np.mean(matched_share[name])), 4)}
        for k, firsts in per_k.items():
            found = [f for f in firsts if f is not None]
            summary[name][f"K{k}"] = {
                "runs_detected": f"{len(found)}/{len(firsts)}",
                "median_query": float(np.median(found)) if found else None,
                "p90_query": float(np.percentile(found, 90)) if found else None,
            }
    return summary


def false_match_counts(fps: Sequence[np.ndarray]) -> np.ndarray:
    """Shared values of every pair of different images (an inverted index, so only sharing pairs are visited)."""
    index: dict[int, list[int]] = defaultdict(list)
    for i, values in enumerate(fps):
        for value in values.tolist():
            index[value].append(i)
    pairs: dict[tuple[int, int], int] = defaultdict(int)
    for ids in index.values():
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                pairs[(ids[a], ids[b])] += 1
    n = len(fps)
    counts = np.zeros(n * (n - 1) // 2, dtype=np.int32)
    counts[: len(pairs)] = list(pairs.values())
    return counts


def false_matches_at_scale(spec: Spec, images: Sequence[np.ndarray]) -> dict[str, object]:
    """Equal bands of every pair of ``images`` (phash: band k against band k, vectorised): the false-match rate
    per pair where the inverted index of ``false_match_counts`` would be too slow."""
    prints_ = [fingerprint(x, spec) for x in images]
    bands = np.array([f for f in prints_ if f.size == spec.top])
    hist = np.zeros(spec.top + 1, dtype=np.int64)
    for start in range(0, len(bands), 200):
        equal = (bands[start : start + 200, None, :] == bands[None, :, :]).sum(axis=2)
        for row, counts in enumerate(equal):
            hist += np.bincount(counts[start + row + 1 :], minlength=spec.top + 1)
    pairs = int(hist.sum())
    return {
        "images": len(images),
        "without_fingerprint": len(images) - len(bands),
        "pairs": pairs,
        **{
            f"t{t}": {"pairs": int(hist[t:].sum()), "rate": float(hist[t:].sum() / pairs)}
            for t in range(8, spec.top + 1)
        },
    }


def variant_counts(specs: Sequence[Spec], pictures: Sequence[Image.Image], seed: int) -> Counts:
    rng = random.Random(seed)
    out: Counts = {spec.named(): defaultdict(list) for spec in specs}
    for picture in pictures:
        original = prints(specs, picture)
        for name, make in VARIANTS.items():
            variant = prints(specs, make(picture, rng))
            for k, spec in enumerate(specs):
                out[spec.named()][name].append(shared(original[k], variant[k]))
    return out


def benign_streams(specs: Sequence[Spec], pictures: Sequence[Image.Image], seed: int) -> Counts:
    """One client sends a photo and all its variants (12 queries), or a burst of 10 frames: the most earlier
    queries any one of them matches, at its own size and at any size (what the session rule counts)."""
    rng = random.Random(seed)
    out: Counts = {spec.named(): defaultdict(list) for spec in specs}
    for picture in pictures:
        streams = {
            "variants": [picture, *(make(picture, rng) for name, make in VARIANTS.items() if name != "burst")],
            "burst-10": [burst_frame(picture, rng) for _ in range(10)],
        }
        for kind, images in streams.items():
            sizes = [im.size for im in images]
            per_spec = list(zip(*(prints(specs, im) for im in images), strict=True))
            for spec, fps in zip(specs, per_spec, strict=True):
                same = [
                    sum(shared(fps[t], fps[j]) >= spec.threshold and sizes[t] == sizes[j] for j in range(t))
                    for t in range(len(fps))
                ]
                out[spec.named()][f"{kind}-same-size"].append(max(same))
                out[spec.named()][f"{kind}-any-size"].append(max(earlier_matches(fps, spec.threshold)))
    return out


def rate(counts: Sequence[int] | np.ndarray, threshold: int) -> float:
    counts = np.asarray(counts)
    return round(float(np.mean(counts >= threshold)), 6) if counts.size else float("nan")


def rates(spec: Spec, cases: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    return {case: {t: rate(c, t) for t in THRESHOLDS[spec.kind]} for case, c in cases.items()}


def measure(specs: Sequence[Spec], data: dict[str, object], args: argparse.Namespace) -> dict[str, dict[str, object]]:
    cifar: list[np.ndarray] = data["cifar"]  # type: ignore[assignment]
    web: dict[str, list[tuple[str, str, Image.Image]]] = data["web"]  # type: ignore[assignment]
    results: dict[str, dict[str, object]] = {
        s.named(): {"spec": s.__dict__, "attack_pairs": {}, "attack_sequences": {}, "false_matches": {},
                    "benign_variants": {}, "benign_streams": {}, "short_fingerprints": {}}
        for s in specs
    }  # fmt: skip
    photos = {split: [np.asarray(im) for _, kind, im in items if kind == "wallpaper"] for split, items in web.items()}
    groups = {"cifar": cifar[: args.attack_images], **{f"photos-{k}": v for k, v in photos.items()}}
    for group, images in groups.items():
        for name, cases in attack_pairs(specs, images, 1).items():
            results[name]["attack_pairs"][group] = rates(next(s for s in specs if s.named() == name), cases)
    _log("attack pairs")
    for label, images in (("cifar", cifar[: args.sequences]), ("photos", photos["choice"][: args.sequences // 2])):
        queries = args.queries if label == "cifar" else args.queries // 3
        makers: dict[str, Callable[[int, np.ndarray], Iterator[np.ndarray]]] = {
            "square-linf-p0.8": lambda i, x, n=queries: square_linf(x, np.random.default_rng(i), n, 0.8),
            "square-linf-p0.05": lambda i, x, n=queries: square_linf(x, np.random.default_rng(i), n, 0.05),
            "spsa": lambda i, x, n=queries: spsa(x, np.random.default_rng(i), n),
        }
        for kind, make in makers.items():
            runs = (list(make(i, x)) for i, x in enumerate(images))
            for name, summary in sequence_stats(specs, runs).items():
                results[name]["attack_sequences"][f"{label}-{kind}"] = summary
        _log(f"{label} sequences")
    sets = {"cifar": [(k, k, im) for k, im in enumerate(cifar)], **{f"web-{k}": v for k, v in web.items()}}
    for group, items in sets.items():
        for spec in specs:
            fps = [fingerprint(im, spec) for _, _, im in items]
            counts = false_match_counts(fps)
            result = results[spec.named()]
            result["false_matches"][group] = {
                "pairs": int(counts.size),
                **{t: rate(counts, t) for t in THRESHOLDS[spec.kind]},
            }
            result["short_fingerprints"][group] = [
                str(items[i][0]) for i, f in enumerate(fps) if f.size < spec.threshold
            ]
            if group.startswith("web"):
                worst = sorted(((int(c), i) for i, c in enumerate(counts) if c >= spec.threshold), reverse=True)
                result["false_matches"][group]["matching_pairs"] = _pair_names(worst[:20], items)
    _log("false matches")
    for split, items in web.items():
        wallpapers = [im for _, kind, im in items if kind == "wallpaper"]
        for name, cases in variant_counts(specs, wallpapers, 3).items():
            results[name]["benign_variants"][split] = rates(next(s for s in specs if s.named() == name), cases)
        for name, cases in benign_streams(specs, wallpapers, 4).items():
            results[name]["benign_streams"][split] = {
                kind: {"max": int(max(c)), **{f"K{k}": rate(c, k) for k in (3, 5, 6, 10, 15)}}
                for kind, c in cases.items()
            }
    _log("variants")
    if args.scale:
        big = cifar_test(args.scale)
        for spec in specs:
            if spec.kind == "phash":
                results[spec.named()]["false_matches"][f"cifar-{args.scale}"] = false_matches_at_scale(spec, big)
        _log("false matches at scale")
    return results


def _pair_names(worst: Sequence[tuple[int, int]], items: Sequence[tuple[object, str, object]]) -> list[str]:
    """Names of the pairs behind condensed pair indices (row-major over i < j)."""
    n, names = len(items), []
    for shared_values, index in worst:
        i = int(n - 2 - math.floor(math.sqrt(-8 * index + 4 * n * (n - 1) - 7) / 2 - 0.5))
        j = int(index + i + 1 - n * (n - 1) // 2 + (n - i) * ((n - i) - 1) // 2)
        names.append(f"{items[i][0]} ({items[i][1]}) ~ {items[j][0]} ({items[j][1]}): {shared_values}")
    return names


_STARTED = time.monotonic()


def _log(what: str) -> None:
    print(f"{what} measured at {time.monotonic() - _STARTED:.0f}s", file=sys.stderr)


def show(results: dict[str, dict[str, object]]) -> None:
    streams = Table(
        title="benign streams of one client: share reaching K earlier matches (the rule: 6 same size, 15 any)"
    )
    streams.add_column("candidate")
    cases = [
        (kind, k) for kind in ("variants", "burst-10") for k in ((f"{kind}-same-size", 6), (f"{kind}-any-size", 15))
    ]
    for _, (case, k) in cases:
        streams.add_column(f"{case} K{k} (max)", justify="right")
    for name, r in results.items():
        got = r["benign_streams"]["choice"]
        streams.add_row(name, *(f"{got[case][f'K{k}']:.3f} ({got[case]['max']})" for _, (case, k) in cases))
    Console(width=220).print(streams)
    table = Table(title="fingerprint candidates at their threshold (match rates; train+calibration split photos)")
    columns = [
        ("cifar L-inf8", lambda r: r["attack_pairs"]["cifar"]["linf8-random-sign"]),
        ("cifar 8 vs 8", lambda r: r["attack_pairs"]["cifar"]["linf8-vs-linf8"]),
        ("photo L-inf8", lambda r: r["attack_pairs"]["photos-choice"]["linf8-random-sign"]),
        ("cifar L2", lambda r: r["attack_pairs"]["cifar"]["l2-0.5"]),
        ("false cifar", lambda r: r["false_matches"]["cifar"]),
        ("false web", lambda r: r["false_matches"]["web-choice"]),
        ("jpeg-q60", lambda r: r["benign_variants"]["choice"]["jpeg-q60"]),
        ("resize-160", lambda r: r["benign_variants"]["choice"]["resize-160"]),
        ("crop-90", lambda r: r["benign_variants"]["choice"]["crop-centre-90"]),
        ("burst", lambda r: r["benign_variants"]["choice"]["burst"]),
    ]
    table.add_column("candidate")
    for name, _ in columns:
        table.add_column(name, justify="right")
    for seq in ("cifar-square-linf-p0.8", "cifar-spsa", "photos-square-linf-p0.8"):
        table.add_column(f"{seq} K5 median", justify="right")
    for name, r in results.items():
        t = r["spec"]["threshold"]
        cells = [f"{get(r)[t]:.4f}" for _, get in columns]
        k5 = [
            r["attack_sequences"][seq]["K5"]
            for seq in ("cifar-square-linf-p0.8", "cifar-spsa", "photos-square-linf-p0.8")
        ]
        table.add_row(name, *cells, *(f"{k['median_query']} ({k['runs_detected']})" for k in k5))
    Console(width=260).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar", type=int, default=1000, help="CIFAR-10 test images for the false-match pairs")
    parser.add_argument("--attack-images", type=int, default=300, help="images for the attack pairs")
    parser.add_argument(
        "--sequences", type=int, default=40, help="attack runs per sequence kind (CIFAR; half on photos)"
    )
    parser.add_argument("--queries", type=int, default=300, help="queries per CIFAR run (a third per photo run)")
    parser.add_argument("--per-kind", type=int, default=80, help="web pictures per kind (wallpapers: all)")
    parser.add_argument("--scale", type=int, default=10000, help="CIFAR-10 test images for the phash pair count")
    parser.add_argument("--only", help="measure only candidates whose name contains this")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "shield_fingerprint.json")
    args = parser.parse_args(argv)
    per_kind = {kind: args.per_kind for kind in ("stamp", "astronomy", "page", "pattern")}
    data = {"cifar": cifar_test(args.cifar), "web": web_pictures(per_kind)}
    print({"cifar": len(data["cifar"]), **{k: len(v) for k, v in data["web"].items()}}, file=sys.stderr)
    specs = [spec for spec in CANDIDATES if not args.only or args.only in spec.named()]
    results = measure(specs, data, args)
    show(results)
    report = {"chosen": DEFAULT.named(), "candidates": results, "args": {k: str(v) for k, v in vars(args).items()}}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
