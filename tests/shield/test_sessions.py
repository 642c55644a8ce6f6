"""Attack sessions: real query-attack runs (Square's proposals at 8/255) open them, benign streams of the same
picture do not, and the Redis backend decides exactly as the in-process one."""

from __future__ import annotations

import hashlib
import io
import math
import random
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from scanner.shield.index import MemoryIndex, RedisIndex
from scanner.shield.sessions import Policy, Shield, ShieldResult

EPS = 8


def square_queries(x: np.ndarray, seed: int, queries: int, p_init: float = 0.8) -> Iterator[np.ndarray]:
    """The queries of Square L-inf 8/255 (torchattacks' proposal distribution and p schedule for 5,000 queries;
    the model replaced by a coin that keeps 20% of the proposals): vertical stripes, then squares of a fresh
    sign per channel."""
    rng = np.random.default_rng(seed)
    h, w, c = x.shape
    base = x.astype(np.int16)
    best = np.clip(base + EPS * rng.choice([-1, 1], size=(1, w, c)), 0, 255)
    yield best.astype(np.uint8)
    for it in range(1, queries):
        scaled = int(it / 5000 * 10000)
        p = p_init / next((d for edge, d in ((10, 1), (50, 2), (200, 4), (500, 8)) if scaled <= edge), 16)
        side = min(max(round(math.sqrt(p * h * w)), 1), h - 1, w - 1)
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        new = best.copy()
        new[top : top + side, left : left + side] = np.clip(
            base[top : top + side, left : left + side] + EPS * rng.choice([-1, 1], size=(1, 1, c)), 0, 255
        )
        yield new.astype(np.uint8)
        if rng.random() < 0.2:
            best = new


def sha(image: np.ndarray | Image.Image) -> str:
    data = image.tobytes() if isinstance(image, np.ndarray) else np.asarray(image).tobytes()
    return hashlib.sha256(data).hexdigest()


def send(shield: Shield, tenant: int, client: str, images, start: float = 0.0) -> list[ShieldResult]:
    return [shield.check(tenant, client, sha(x), x, at=start + k) for k, x in enumerate(images)]


def first_in_session(results: list[ShieldResult]) -> int | None:
    return next((k + 1 for k, r in enumerate(results) if r.in_session), None)


def encode(image: Image.Image, fmt: str, **options: object) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def variants(photo: np.ndarray) -> list[Image.Image]:
    """The same picture as the web hands it around: sizes (srcset, CDN), thumbnails, re-encodes, crops."""
    image = Image.fromarray(photo)
    w, h = image.size
    sizes = [image.resize((max(1, w * s // 512), max(1, h * s // 512)), Image.Resampling.LANCZOS)
             for s in (1024, 320, 160, 96)]  # fmt: skip
    encodes = [encode(image, "JPEG", quality=60), encode(image, "JPEG", quality=85), encode(image, "WEBP", quality=80)]
    crops = [image.crop((w // 20, h // 20, w * 19 // 20, h * 19 // 20)), image.crop((0, 0, w * 4 // 5, h * 4 // 5))]
    return [image, *sizes, *encodes, *crops]


def test_square_attacks_from_one_client_are_caught_within_a_few_queries(photos: list[np.ndarray]) -> None:
    firsts, inside = [], []
    for k, photo in enumerate(photos[:16]):
        shield = Shield(MemoryIndex(capacity=10_000, window_s=3600.0))
        results = send(shield, 1, "attacker", square_queries(photo, k, 40))
        firsts.append(first_in_session(results))
        if firsts[-1] is None:
            continue
        opened = results[firsts[-1] - 1]
        assert opened.opened and opened.scope == "client" and opened.session_id == opened.query_id
        assert len(opened.matched) >= shield.thresholds.client_matches
        assert {r.session_id for r in results if r.in_session} == {opened.session_id}
        inside += [r.in_session for r in results[firsts[-1] :]]
    caught = sorted(f for f in firsts if f is not None)
    # measured on these photos: 15 of 16 runs caught, median 7 queries (the target: <= 10)
    assert len(caught) >= 0.8 * len(firsts)
    assert caught[len(caught) // 2] <= 10
    # after that a query whose square flipped a large region may match nothing: 91% stay in the session
    assert np.mean(inside) >= 0.8


def test_a_persistent_attacker_stays_in_the_session_under_any_client_name(photos: list[np.ndarray]) -> None:
    shield = Shield(MemoryIndex(capacity=10_000, window_s=3600.0))
    queries = list(square_queries(photos[2], 0, 60))
    first = send(shield, 1, "attacker", queries[:20])
    session = next(r.session_id for r in first if r.in_session)
    later = [shield.check(1, f"fresh-account-{k}", sha(q), q, at=100.0 + k) for k, q in enumerate(queries[20:])]
    assert sum(r.session_id == session for r in later) >= 0.9 * len(later)


def test_an_attack_spread_over_accounts_opens_a_tenant_session(photos: list[np.ndarray]) -> None:
    shield = Shield(MemoryIndex(capacity=10_000, window_s=3600.0))
    results = [
        shield.check(1, f"account-{k % 8}", sha(q), q, at=float(k))  # five queries per account, never six
        for k, q in enumerate(square_queries(photos[4], 1, 40))
    ]
    opened = next(r for r in results if r.in_session)
    assert opened.scope == "tenant" and opened.opened
    assert results[-1].session_id == opened.session_id
    # the same attack against another tenant of the service is that tenant's business alone
    other = Shield(shield.index)
    assert not other.check(2, "account-0", sha(photos[4]), photos[4], at=100.0).matched


def test_benign_streams_open_no_session(photos: list[np.ndarray]) -> None:
    shield = Shield(MemoryIndex(capacity=100_000, window_s=3600.0))
    rng = random.Random(0)
    clock = 0.0
    for k, photo in enumerate(photos):
        # one client fetches a picture at every size and in every encoding a site serves (srcset, CDN)
        for image in variants(photo):
            clock += 1
            assert not shield.check(1, f"browser-{k}", sha(image), image, at=clock).in_session
        # many users upload the same picture, each re-encoded by their own phone or platform
        for user in range(12):
            meme = encode(Image.fromarray(photo), "JPEG", quality=rng.randrange(60, 95))
            clock += 1
            assert not shield.check(1, f"user-{k}-{user}", sha(meme), meme, at=clock).in_session
    # a crawler revisiting the same pages sends the same bytes: duplicates, no new queries
    again = [shield.check(1, "crawler", sha(photo), photo, at=clock + 1 + k) for k, photo in enumerate(photos)]
    revisit = [shield.check(1, "crawler", sha(photo), photo, at=clock + 100 + k) for k, photo in enumerate(photos)]
    assert all(r.duplicate and not r.in_session for r in revisit)
    assert [r.query_id for r in revisit] == [r.query_id for r in again]


def test_policy_values(photos: list[np.ndarray]) -> None:
    shield = Shield(MemoryIndex(capacity=1000, window_s=3600.0))
    results = send(shield, 1, "attacker", square_queries(photos[3], 0, 30))
    inside, outside = next(r for r in results if r.in_session), results[0]
    assert [p.value for p in Policy] == ["off", "observe", "reject"] and Policy("reject") is Policy.REJECT
    assert Policy.REJECT.refuses(inside) and not Policy.REJECT.refuses(outside)
    assert not Policy.OBSERVE.refuses(inside) and Policy.OBSERVE.marks and not Policy.OFF.marks


@pytest.fixture
def stream(photos: list[np.ndarray]) -> list[tuple[int, str, np.ndarray | Image.Image]]:
    """Benign uploads, exact duplicates, re-encodes, an attack from one client and one spread over accounts,
    and a second tenant, interleaved as one service would receive them."""
    out: list[tuple[int, str, np.ndarray | Image.Image]] = []
    for k, photo in enumerate(photos[:12]):
        out += [(1, f"user-{k % 4}", photo), (2, "user-0", photo)]
    out += [(1, "user-1", photos[0]), (1, "user-9", encode(Image.fromarray(photos[1]), "JPEG", quality=70))]
    attack = list(square_queries(photos[5], 3, 30))
    spread = list(square_queries(photos[6], 4, 30))
    for k in range(30):
        out += [(1, "attacker", attack[k]), (1, f"account-{k % 6}", spread[k])]
        if k % 5 == 0:
            out.append((2, "user-3", photos[7 + k // 5]))
    return out


def test_redis_decides_exactly_as_the_in_process_index(
    redis_url: str, stream: list[tuple[int, str, np.ndarray | Image.Image]]
) -> None:
    memory = Shield(MemoryIndex(capacity=10_000, window_s=3600.0))
    shared = Shield(RedisIndex(redis_url, window_s=3600.0))
    decisions = []
    for k, (tenant, client, image) in enumerate(stream):
        decisions.append((memory.check(tenant, client, sha(image), image, at=float(k)),
                          shared.check(tenant, client, sha(image), image, at=float(k))))  # fmt: skip
    assert [a for a, _ in decisions] == [b for _, b in decisions]
    scopes = {a.scope for a, _ in decisions if a.opened}
    assert scopes == {"client", "tenant"} and any(a.duplicate for a, _ in decisions)
    record = shared.index.session(1, next(a.session_id for a, _ in decisions if a.opened))
    assert record == memory.index.session(1, record.session_id)
    shared.index.close()


def test_two_shields_on_one_redis_share_the_sessions(redis_url: str, photos: list[np.ndarray]) -> None:
    # two API processes behind a load balancer: the attack's queries alternate between them
    first, second = Shield(RedisIndex(redis_url)), Shield(RedisIndex(redis_url))
    results = [
        (first if k % 2 else second).check(1, "attacker", sha(q), q, at=float(k))
        for k, q in enumerate(square_queries(photos[8], 5, 30))
    ]
    sessions = {r.session_id for r in results if r.in_session}
    assert len(sessions) == 1 and results[-1].in_session
    new = [r.query_id for r in results if not r.duplicate]  # Square may propose one image twice
    assert sorted(new) == list(range(1, len(new) + 1))  # one sequence of query ids for both
    first.index.close()
    second.index.close()
