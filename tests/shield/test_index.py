"""The index of recent queries: duplicates, the time window, bounded memory, persistence, and the Redis backend
(a real redis-server of the tests' own) sharing one state between processes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from scanner.shield.fingerprint import DEFAULT, fingerprint
from scanner.shield.index import Index, MemoryIndex, RedisIndex, indexed_count

REPO = Path(__file__).resolve().parents[2]


def sha(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def noisy(x: np.ndarray, seed: int, eps: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(x.astype(np.int16) + eps * rng.choice([-1, 1], size=x.shape), 0, 255).astype(np.uint8)


@pytest.fixture(params=["memory", "redis"])
def make_index(request: pytest.FixtureRequest) -> Iterator[Callable[..., Index]]:
    """Builds an index of either backend (the Redis one on the tests' own server, emptied)."""
    made: list[Index] = []

    def make(**options: object) -> Index:
        if request.param == "memory":
            index: Index = MemoryIndex(**options)  # type: ignore[arg-type]
        else:
            options.pop("capacity", None)
            index = RedisIndex(request.getfixturevalue("redis_url"), **options)  # type: ignore[arg-type]
        made.append(index)
        return index

    yield make
    for index in made:
        index.close()


def test_an_exact_duplicate_is_no_new_query(make_index: Callable[..., Index], photos: list[np.ndarray]) -> None:
    index = make_index()
    fp = fingerprint(photos[0])
    first = index.observe(1, "alice", sha("a"), fp, at=100.0)
    again = index.observe(1, "bob", sha("a"), fp, at=200.0)
    assert not first.duplicate and again.duplicate and again.query_id == first.query_id
    assert again.matches == ()
    # it was not stored: the next near-identical query matches the first sighting only
    near = index.observe(1, "alice", sha("b"), fingerprint(noisy(photos[0], 1)), at=300.0)
    assert [m.query_id for m in near.matches] == [first.query_id]
    # another tenant's identical bytes are that tenant's first query
    assert not index.observe(2, "alice", sha("a"), fp, at=300.0).duplicate


def test_near_identical_queries_match_and_different_photos_do_not(
    make_index: Callable[..., Index], photos: list[np.ndarray]
) -> None:
    index = make_index()
    for k, photo in enumerate(photos[:10]):
        assert index.observe(1, "alice", sha(k), fingerprint(photo), at=float(k)).matches == ()
    seen = index.observe(1, "bob", sha("near"), fingerprint(noisy(photos[3], 7)), at=20.0, dims=5)
    assert [m.query_id for m in seen.matches] == [4]  # the fourth query, from another client
    assert seen.matches[0].shared >= DEFAULT.threshold


def test_queries_older_than_the_window_are_not_matched(
    make_index: Callable[..., Index], photos: list[np.ndarray]
) -> None:
    index = make_index(window_s=60.0)
    first = index.observe(1, "alice", sha(1), fingerprint(photos[0]), at=1000.0)
    assert index.observe(1, "alice", sha(2), fingerprint(noisy(photos[0], 1)), at=1059.0).matches
    late = index.observe(1, "alice", sha(3), fingerprint(noisy(photos[0], 2)), at=1061.0)
    assert first.query_id not in [m.query_id for m in late.matches]
    # an old identical file is a new query again once its first sighting left the window
    assert not index.observe(1, "alice", sha(1), fingerprint(photos[0]), at=1200.0).duplicate


def test_a_look_up_meets_at_most_the_chain_depth_per_key(
    make_index: Callable[..., Index], photos: list[np.ndarray]
) -> None:
    index = make_index(chain_depth=8)
    fp = fingerprint(photos[0])
    for k in range(30):  # thirty distinct files with the same fingerprint
        index.observe(1, "alice", sha(k), fp, at=float(k))
    seen = index.observe(1, "alice", sha("last"), fp, at=31.0)
    ids = sorted(m.query_id for m in seen.matches)
    assert ids == list(range(23, 31))  # the newest eight, whatever the store holds


def test_memory_stays_bounded_when_the_ring_comes_round(photos: list[np.ndarray]) -> None:
    index = MemoryIndex(capacity=40, window_s=1e9)
    arrays = {name: value.nbytes for name, value in vars(index).items() if isinstance(value, np.ndarray)}
    first = fingerprint(photos[0])
    index.observe(1, "alice", sha(0), first, at=0.0)
    for k in range(1, 400):
        index.observe(1, f"client-{k}", sha(k), fingerprint(photos[k % len(photos)]) if k % 7 else first, at=float(k))
    assert len(index) == 40
    assert len(index._heads) <= 40 * (indexed_count(DEFAULT) + 1)  # each key held by a live query only
    assert {name: value.nbytes for name, value in vars(index).items() if isinstance(value, np.ndarray)} == arrays
    # the first query was overwritten: it neither matches nor counts as the original of its bytes
    seen = index.observe(1, "alice", sha(0), first, at=500.0)
    assert not seen.duplicate and all(m.query_id > 400 - 40 for m in seen.matches)


def test_the_redis_state_is_bounded_per_tenant_and_expires(redis_url: str, photos: list[np.ndarray]) -> None:
    index = RedisIndex(redis_url, window_s=600.0, tenant_capacity=25, chain_depth=4)
    for k in range(120):
        index.observe(3, "alice", sha(k), fingerprint(photos[k % len(photos)]), at=1000.0 + k)
    client = redis.Redis.from_url(redis_url)
    assert client.zcard("shield:3:order") == 25
    assert len(client.keys("shield:3:q:*")) == 25
    for key in client.keys("shield:3:k:*"):
        assert client.zcard(key) <= 4
    assert all(0 < client.ttl(key) <= 600 for key in client.keys("shield:3:*"))
    index.close()
    client.close()


def test_the_sqlite_file_keeps_the_window_across_a_restart(tmp_path: Path, photos: list[np.ndarray]) -> None:
    path, now = tmp_path / "shield.sqlite", time.time()  # the reopened file keeps what is younger than the window
    index = MemoryIndex(capacity=100, window_s=3600.0, path=path)
    index.observe(1, "alice", sha("old"), fingerprint(photos[8]), at=now - 7200)
    ids = [index.observe(1, "alice", sha(k), fingerprint(photos[k]), at=now - 60 + k).query_id for k in range(5)]
    record = index.join(1, ids[2], [ids[2]], "alice", now - 58, "client")
    index.close()

    reopened = MemoryIndex(capacity=100, window_s=3600.0, path=path)
    assert len(reopened) == 5  # the query older than the window was not loaded
    again = reopened.observe(1, "bob", sha(3), fingerprint(photos[3]), at=now)
    assert again.duplicate and again.query_id == ids[3]
    near = reopened.observe(1, "bob", sha("near"), fingerprint(noisy(photos[2], 3)), at=now)
    assert [(m.query_id, m.session_id) for m in near.matches] == [(ids[2], ids[2])]
    assert reopened.session(1, ids[2]) == record
    assert reopened.observe(1, "carol", sha("new"), fingerprint(photos[9]), at=now).query_id == ids[-1] + 2
    reopened.close()


_OTHER_PROCESS = """
import json, sys
import numpy as np
from scanner.shield.index import RedisIndex
url, tenant, client, shas, prints = json.loads(sys.stdin.read())
index = RedisIndex(url)
out = [index.observe(tenant, client, s, np.array(f, dtype=np.uint32), at=float(k)).query_id for k, (s, f) in
       enumerate(zip(shas, prints))]
print(json.dumps(out))
"""


def test_two_processes_share_one_redis_state(redis_url: str, photos: list[np.ndarray]) -> None:
    prints = [fingerprint(noisy(photos[5], seed)).tolist() for seed in range(4)]
    shas = [sha("other", k) for k in range(4)]
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS],
        input=json.dumps([redis_url, 9, "mallory", shas, prints]),
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    theirs = json.loads(done.stdout)
    index = RedisIndex(redis_url)
    mine = index.observe(9, "trudy", sha("mine"), fingerprint(noisy(photos[5], 99)), at=10.0)
    assert sorted(m.query_id for m in mine.matches) == sorted(theirs)
    assert index.observe(9, "trudy", shas[0], np.array(prints[0], dtype=np.uint32), at=11.0).duplicate
    index.close()
