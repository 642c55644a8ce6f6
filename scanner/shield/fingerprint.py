"""Content fingerprints that survive the small changes a query attack makes between its queries.

A fingerprint is an array of distinct non-zero unsigned 32-bit values; two images *match* when their
fingerprints share at least ``spec.threshold`` values.  That one rule (set overlap) serves both kinds below; the
index finds candidates through ``index_keys``, which guarantees (by pigeonhole) that two matching fingerprints
share at least one key.

The grid both kinds start from is what the model sees: the largest centred square (the engine's centre crop
for its square input), area-averaged down to ``size`` x ``size``.  Changes outside the model's crop, or at a
finer scale than its input, cannot move the model, so they must not move the fingerprint either: an
attacker who added junk there would break the matching for free.

Kinds (``Spec.kind``):

- ``phash`` (the default, chosen by measurement; see ``scanner.shield``): the DCT perceptual hash of the grey
  grid: the 63 lowest AC frequencies (the 8x8 corner without the DC term) against their median, 60 of those
  bits cut into ``top`` bands of ``bits`` bits; each band with its index is one value.  ``threshold`` equal
  bands make a match.  Index keys: the bands in ``top - threshold + 1`` groups (two fingerprints that differ
  in at most ``top - threshold`` bands agree on a whole group), so a key is a 20-bit pattern, rare enough for
  an inverted index.  A grid with almost no low-frequency energy (``min_energy``: a flat image) has no
  fingerprint: its bits would be noise, and all such images would match each other.
- ``windows`` (Blacklight, Li et al. 2022): the RGB or grey grid quantised by ``step`` levels, flattened,
  every run of ``window`` values (stride 1) one value; the ``top`` smallest of their mixed values are kept (a
  bottom-k sketch of the set of windows).  Index keys: the ``top - threshold + 1`` smallest values are stored,
  the query looks up all of its values.  Kept for the comparison in ``benchmarks/shield_fingerprint.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from PIL import Image

from worker.engine.imaging import crop_box

Kind = Literal["windows", "phash"]
Fingerprint = np.ndarray  # distinct non-zero uint32 (phash: in band order; windows: sorted)


@dataclass(frozen=True)
class Spec:
    kind: Kind = "phash"
    size: int = 32  # side of the grid (the model's input)
    top: int = 15  # values kept: bands (phash) or windows (windows)
    threshold: int = 13  # shared values for a match
    bits: int = 4  # bits per band (phash)
    min_energy: float = 1.0  # least mean |AC coefficient| (orthonormal DCT, grey levels) for a fingerprint
    sampled: int = 8  # larger images are first sampled on a (size x sampled) lattice; 0: every pixel averaged
    colour: bool = True  # RGB values, interleaved, or grey (windows)
    step: int = 50  # quantisation step in grey levels (windows)
    window: int = 20  # values per window (windows)
    salt: int = 0  # mixed into every value, so fingerprints of different specs never collide

    def named(self) -> str:
        if self.kind == "phash":
            return (
                f"phash-{self.size}px-{self.top}x{self.bits}bit-t{self.threshold}-e{self.min_energy:g}-s{self.sampled}"
            )
        colour = "rgb" if self.colour else "grey"
        shape = f"q{self.step}-w{self.window}-top{self.top}-t{self.threshold}-s{self.sampled}"
        return f"windows-{self.size}px-{colour}-{shape}"

    def with_(self, **changes: object) -> Spec:
        return replace(self, **changes)  # type: ignore[arg-type]


DEFAULT = Spec()


def fingerprint(image: Image.Image | np.ndarray, spec: Spec = DEFAULT) -> Fingerprint:
    """The fingerprint of ``image`` (a PIL image of any mode, or an HxW or HxWxC uint8 array)."""
    colour = spec.kind == "windows" and spec.colour
    grid = model_view(image, spec.size, colour, spec.sampled)
    return _windows(grid, spec) if spec.kind == "windows" else _phash_bands(grid, spec)


def matches(a: Fingerprint, b: Fingerprint, spec: Spec = DEFAULT) -> bool:
    return shared(a, b) >= spec.threshold


def shared(a: Fingerprint, b: Fingerprint) -> int:
    return int(np.intersect1d(a, b, assume_unique=True).size)


def index_keys(fp: Fingerprint, spec: Spec = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """(keys to store the fingerprint under, keys to look a query up by): any stored fingerprint that matches
    the query holds one of the query's look-up keys."""
    groups = max(1, spec.top - spec.threshold + 1)
    if fp.size == 0:
        empty = np.zeros(0, dtype=np.uint32)
        return empty, empty
    if spec.kind == "windows":
        return fp[:groups], fp
    if fp.size != spec.top:  # only a full set of bands has its groups
        raise ValueError(f"a {spec.kind} fingerprint has {spec.top} values, not {fp.size}")
    keys = _group_keys(fp, groups)
    return keys, keys


def model_view(image: Image.Image | np.ndarray, size: int, colour: bool, sampled: int = 0) -> np.ndarray:
    """The largest centred square, area-averaged to ``size`` x ``size`` (uint8; HxWx3 or HxW).

    ``sampled``: a square larger than ``size * sampled`` is first sampled on that lattice (nearest pixel), so
    each cell averages ``sampled**2`` pixels instead of all of them: a quarter of a 512 px image's pixels are
    read, which halves the cost, and per-pixel noise still averages out (its spread shrinks ``sampled``-fold).
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if image.width != image.height:  # the engine's own centre crop, to the pixel (its rounding included)
        left, top, right, bottom = (round(v) for v in crop_box(image.width, image.height, size, size))
        image = image.crop((left, top, max(right, left + 1), max(bottom, top + 1)))
    side = min(image.size)
    if sampled and side > size * sampled:
        image = image.resize((size * sampled, size * sampled), Image.Resampling.NEAREST)
        side = size * sampled
    factor = side // size
    if factor >= 2:  # reduce() is an exact box average and the cheapest way to read every pixel once
        image = image.reduce(factor)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BOX)
    wanted = "RGB" if colour else "L"
    return np.asarray(image if image.mode == wanted else image.convert(wanted), dtype=np.uint8)


def _mix(values: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64's finaliser, its high 32 bits (never 0): similar inputs get unrelated values.  Two different
    inputs of one pair of fingerprints share a value with odds of about 50 * 50 / 2**32."""
    # numpy's unsigned array arithmetic wraps silently (only scalar arithmetic warns): modulo 2**64, as meant
    z = np.asarray(values, dtype=np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (salt + 1)) & 0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    high = ((z ^ (z >> np.uint64(31))) >> np.uint64(32)).astype(np.uint32)
    high[high == 0] = 1
    return high


def _group_keys(fp: np.ndarray, groups: int) -> np.ndarray:
    """One key per group of consecutive bands: the group's values, position by position, mixed into one."""
    per = -(-fp.size // groups)
    padded = np.zeros(groups * per, dtype=np.uint64)
    padded[: fp.size] = fp
    powers = _POWERS.get(per)
    if powers is None:
        powers = _POWERS.setdefault(
            per, np.array([pow(0x100000001B3, per - 1 - i, 2**64) for i in range(per)], np.uint64)
        )
    packed = padded.reshape(groups, per) @ powers + np.arange(groups, dtype=np.uint64)  # wraps modulo 2**64
    return _mix(packed, 7)


_POWERS: dict[int, np.ndarray] = {}


def _windows(grid: np.ndarray, spec: Spec) -> Fingerprint:
    levels = 255 // spec.step + 1
    if levels**spec.window >= 2**53:
        raise ValueError(f"windows of {spec.window} values in {levels} levels do not fit a float64 exactly")
    quantised = (grid.reshape(-1) // spec.step).astype(np.float64)
    if quantised.size < spec.window:
        quantised = np.pad(quantised, (0, spec.window - quantised.size))
    # Each window written as a base-`levels` number: exact (below 2**53, so the BLAS product is exact too), and
    # different windows never collide before the mixing.
    powers = float(levels) ** np.arange(spec.window - 1, -1, -1)
    codes = np.lib.stride_tricks.sliding_window_view(quantised, spec.window) @ powers
    return _smallest_distinct(_mix(codes.astype(np.uint64), spec.salt), spec.top)


def _smallest_distinct(values: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` smallest distinct values, sorted; a partial sort first, since only a few are kept."""
    take = 4 * count
    if values.size > take:
        smallest = np.unique(np.partition(values, take - 1)[:take])
        if smallest.size >= count:  # enough distinct values among the smallest: they are the answer
            return smallest[:count]
    return np.unique(values)[:count]


def _dct_rows(n: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the orthonormal DCT-II matrix of size n."""
    k = np.arange(keep)[:, None]
    i = np.arange(n)[None, :]
    rows = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    rows[0] /= np.sqrt(2.0)
    return rows


_DCT_CACHE: dict[int, np.ndarray] = {}
_BIT_WEIGHTS: dict[int, np.ndarray] = {}


def _phash_bands(grid: np.ndarray, spec: Spec) -> Fingerprint:
    rows = _DCT_CACHE.get(grid.shape[0])
    if rows is None:
        rows = _DCT_CACHE.setdefault(grid.shape[0], _dct_rows(grid.shape[0], 8))
    # einsum, not @: BLAS would start its threads for these tiny products, and cost more than the product
    low = np.einsum("ij,kj->ik", np.einsum("ij,jk->ik", rows, grid.astype(np.float64)), rows).reshape(-1)[1:]
    # (the 8x8 corner of the DCT, the DC term left out)
    if np.abs(low).sum() < spec.min_energy * low.size:
        return np.zeros(0, dtype=np.uint32)
    middle = low.size // 2  # 63 values: the median is the 32nd smallest (np.median costs more)
    bits = low > np.partition(low, middle)[middle]
    used = spec.top * spec.bits
    weights = _BIT_WEIGHTS.get(spec.bits)
    if weights is None:
        weights = _BIT_WEIGHTS.setdefault(spec.bits, 1 << np.arange(spec.bits, dtype=np.uint64))
    patterns = bits[:used].reshape(spec.top, spec.bits).astype(np.uint64) @ weights
    tagged = patterns | (np.arange(spec.top, dtype=np.uint64) << np.uint64(16))
    return _mix(tagged, spec.salt + 1)  # in band order; the band index makes the values distinct
