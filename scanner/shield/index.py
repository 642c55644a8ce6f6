"""The store of recent queries' fingerprints and the inverted index that finds the earlier queries a new one
matches: one interface (``Index``), two backends.

- ``MemoryIndex``: in the process, in fixed numpy arrays (a ring of ``capacity`` queries), optionally persisted
  to a SQLite file so a restart keeps the window.
- ``RedisIndex``: in Redis, shared by every API process behind a load balancer; one Lua script per query makes
  the look-up and the insertion atomic, so two processes never miss each other's queries.

What both do for a query (tenant, client, sha256, fingerprint, time, dims):

1. An exact duplicate (the same sha256 for the same tenant within the window) is no new query: it is not stored
   and the earlier query's id and session come back.
2. Candidates: for each of the query's look-up keys (``fingerprint.index_keys``), the latest ``chain_depth``
   earlier queries of the tenant stored under it.  Any stored fingerprint that matches the query holds one of
   those keys (pigeonhole), so the cost per query is bounded by ``chain_depth`` x keys, whatever the store
   holds.
3. Verification: a candidate matches when it shares at least ``threshold`` values with the query (the stored
   fingerprints are compared in full, in Python, by the same function for both backends).
4. The query is stored and indexed.

Time window and eviction: a query older than ``window_s`` is never a candidate.  ``MemoryIndex`` overwrites the
oldest of its ``capacity`` slots (FIFO) and drops the keys that slot was the newest holder of; ``RedisIndex``
gives every key the window as TTL and keeps at most ``chain_depth`` queries per key and ``tenant_capacity`` per
tenant (the oldest are dropped).

Memory bound (``MemoryIndex``, the default fingerprint: 15 values, 3 keys and the sha256's): per slot 15 x 4 B of
fingerprint, 4 x (8 + 8) B of keys and chain links and 56 B of metadata in preallocated arrays (~190 B), and
at most 4 dict entries (~100 B each in CPython, fewer where keys are shared): measured 277 MB for 10^6
(``benchmarks/shield.py``), so ~28 MB for ``capacity`` 10^5.  ``RedisIndex``: 1.1-1.5 KB a query (``used_memory``
per stored query in the same benchmark).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scanner.shield.fingerprint import DEFAULT, Spec, index_keys

_SHA_SALT = 0x5A17
_M64 = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Candidate:
    """An earlier query that matches the new one."""

    query_id: int
    client: int  # client_key of its client
    at: float
    session_id: int  # 0: in no session
    shared: int
    dims: int = 0  # pack_dims of its width and height (0: not given)


@dataclass(frozen=True)
class Observation:
    query_id: int  # the new query's id, or the earlier one's for a duplicate
    duplicate: bool
    session_id: int  # a duplicate's session (0: none); 0 for a new query
    matches: tuple[Candidate, ...] = ()


@dataclass
class SessionRecord:
    session_id: int
    tenant: int
    scope: str  # client or tenant: what opened it
    opened_at: float
    last_at: float
    queries: int  # queries in the session
    clients: set[int] = field(default_factory=set)  # client_keys seen in it (at most MAX_SESSION_CLIENTS)


MAX_SESSION_CLIENTS = 256


class Index(Protocol):
    spec: Spec
    window_s: float

    def observe(
        self, tenant: int, client: str, sha256: str, fp: np.ndarray, at: float | None = None, dims: int = 0
    ) -> Observation:
        """Dedupe, find the matching earlier queries, store the query: one atomic step."""
        ...

    def join(
        self, tenant: int, session_id: int, query_ids: Sequence[int], client: str, at: float, scope: str
    ) -> SessionRecord:
        """Put the queries (the new one first) in the session, opening it when it is new; its record after."""
        ...

    def session(self, tenant: int, session_id: int) -> SessionRecord | None: ...

    def close(self) -> None: ...


def pack_dims(width: int, height: int) -> int:
    """An image's width and height as one integer (what the stores keep)."""
    return (int(width) << 32) | int(height)


def client_key(client: str) -> int:
    """A signed 64-bit name for a client string (what the stores keep instead of the string)."""
    return int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest(), "little", signed=True)


def indexed_count(spec: Spec) -> int:
    """How many keys a query is stored under (``index_keys``: the first of its look-up keys)."""
    return max(1, spec.top - spec.threshold + 1)


def verify(query_fp: np.ndarray, stored: np.ndarray, threshold: int) -> np.ndarray:
    """Shared values of the query with each row of ``stored`` (rows padded with 0, which no value equals)."""
    if stored.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.isin(stored, query_fp).sum(axis=1)


def _mix64(values: np.ndarray) -> np.ndarray:
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)  # array arithmetic wraps modulo 2**64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _sha64(sha256: str) -> int:
    return int(sha256[:16], 16)


# --- in the process ---------------------------------------------------------------------------------------------
class MemoryIndex:
    """The ring of the last ``capacity`` queries (all tenants) in numpy arrays, and a dict from every index key
    (salted by tenant) to its newest holder.  Each slot keeps its keys and, per key, the sequence number of the
    previous holder: a chain from the newest holder down, so a look-up walks only the queries that share a key.
    Overwriting a slot (the ring is full) drops the keys it was the newest holder of, so the dict never holds
    more than ``capacity`` x (keys per query) entries.  ``path``: a SQLite file that keeps the window across
    restarts."""

    def __init__(
        self,
        capacity: int = 100_000,
        window_s: float = 6 * 3600.0,
        spec: Spec = DEFAULT,
        chain_depth: int = 16,
        path: str | Path | None = None,
    ) -> None:
        self.spec, self.window_s, self.chain_depth = spec, window_s, chain_depth
        self.capacity = capacity = max(1, capacity)
        self.indexed = indexed_count(spec)
        width = self.indexed + 1  # the stored keys, then the sha256's
        self._seq = np.full(capacity, -1, dtype=np.int64)
        self._at = np.zeros(capacity, dtype=np.float64)
        self._tenant = np.zeros(capacity, dtype=np.int64)
        self._client = np.zeros(capacity, dtype=np.int64)
        self._sha = np.zeros(capacity, dtype=np.uint64)
        self._session = np.zeros(capacity, dtype=np.int64)
        self._dims = np.zeros(capacity, dtype=np.int64)
        self._fp = np.zeros((capacity, spec.top), dtype=np.uint32)
        self._keys = np.zeros((capacity, width), dtype=np.uint64)  # 0: no key in that column
        self._prev = np.full((capacity, width), -1, dtype=np.int64)
        self._heads: dict[int, int] = {}
        self._next = 0  # the next query's sequence number; its id is seq + 1
        self._sessions: dict[tuple[int, int], SessionRecord] = {}
        self._lock = threading.Lock()
        self._store = _SqliteStore(Path(path), self) if path is not None else None

    # -- the interface --
    def observe(
        self, tenant: int, client: str, sha256: str, fp: np.ndarray, at: float | None = None, dims: int = 0
    ) -> Observation:
        at = time.time() if at is None else at
        fp = np.asarray(fp, dtype=np.uint32)
        lookup = index_keys(fp, self.spec)[1]
        with self._lock:
            keys = self._salted(tenant, lookup, sha256)
            heads = [self._heads.get(key, -1) for key in keys]
            duplicate = self._duplicate(heads[-1], keys[-1], tenant, _sha64(sha256), at)
            if duplicate is not None:
                return Observation(duplicate + 1, True, int(self._session[duplicate % self.capacity]))
            matches = self._matches(keys[:-1], heads[:-1], tenant, fp, at)
            seq = self._insert(tenant, client_key(client), sha256, fp, at, keys, heads, dims)
        if self._store is not None:
            self._store.added(seq)
        return Observation(seq + 1, False, 0, matches)

    def join(
        self, tenant: int, session_id: int, query_ids: Sequence[int], client: str, at: float, scope: str
    ) -> SessionRecord:
        with self._lock:
            record = self._sessions.get((tenant, session_id))
            if record is None:
                record = SessionRecord(session_id, tenant, scope, at, at, 0)
                self._sessions[(tenant, session_id)] = record
                self._forget_old_sessions(at)
            for query_id in query_ids:
                seq = query_id - 1
                slot = seq % self.capacity
                if self._seq[slot] == seq and self._session[slot] != session_id:
                    self._session[slot] = session_id
                    record.queries += 1
            record.last_at = max(record.last_at, at)
            if len(record.clients) < MAX_SESSION_CLIENTS:
                record.clients.add(client_key(client))
        if self._store is not None:
            self._store.joined(record, query_ids)
        return record

    def session(self, tenant: int, session_id: int) -> SessionRecord | None:
        return self._sessions.get((tenant, session_id))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def __len__(self) -> int:
        """Queries held (a scan of the ring: for tests and reports, not for the request path)."""
        return int((self._seq >= 0).sum())

    # -- inside --
    def _salted(self, tenant: int, lookup: np.ndarray, sha256: str) -> list[int]:
        """The dict keys: the look-up keys and then the sha256's, mixed with the tenant (tenants share no
        chains), 64 bits and never 0."""
        raw = np.empty(lookup.size + 1, dtype=np.uint64)
        raw[:-1] = lookup
        raw[-1] = np.uint64(_sha64(sha256) ^ _SHA_SALT)
        keys = _mix64(raw ^ np.uint64((tenant * 0x2545F4914F6CDD1D) & _M64))
        return [key or 1 for key in keys.tolist()]

    def _live(self, seq: int, at: float) -> bool:
        slot = seq % self.capacity
        return seq >= 0 and self._seq[slot] == seq and self._at[slot] >= at - self.window_s

    def _next_holder(self, seq: int, key: int) -> int:
        slot = seq % self.capacity
        return int(self._prev[slot, self._keys[slot].tolist().index(key)])

    def _duplicate(self, head: int, key: int, tenant: int, sha: int, at: float) -> int | None:
        """The earlier query of the tenant with the same sha256 in the window, by the sha key's chain."""
        seq = head
        for _ in range(self.chain_depth):
            if not self._live(seq, at):
                return None
            slot = seq % self.capacity
            if self._tenant[slot] == tenant and int(self._sha[slot]) == sha:
                return seq
            seq = self._next_holder(seq, key)
        return None

    def _matches(
        self, keys: Sequence[int], heads: Sequence[int], tenant: int, fp: np.ndarray, at: float
    ) -> tuple[Candidate, ...]:
        """Walk every key's chain (at most ``chain_depth`` live queries of the tenant), then verify them all."""
        seen: set[int] = set()
        capacity, depth, oldest = self.capacity, self.chain_depth, at - self.window_s
        seq_of, at_of, tenant_of, keys_of, prev_of = self._seq, self._at, self._tenant, self._keys, self._prev
        last = keys_of.shape[1] - 1
        for column, (key, seq) in enumerate(zip(keys, heads, strict=True)):
            taken = 0
            hint = min(column, last - 1)  # a perceptual hash's group j sits in column j of every holder
            while seq >= 0 and taken < depth:  # the walk is the request path: inlined, locals only
                slot = seq % capacity
                if seq_of[slot] != seq or at_of[slot] < oldest:
                    break  # overwritten or out of the window: the rest of the chain is older still
                if tenant_of[slot] == tenant:  # another tenant's key can collide: skip it
                    seen.add(seq)
                    taken += 1
                found = hint if keys_of[slot, hint] == key else keys_of[slot].tolist().index(key)
                seq = int(prev_of[slot, found])
        if not seen:
            return ()
        seqs = np.array(sorted(seen), dtype=np.int64)
        slots = seqs % self.capacity
        shared = verify(fp, self._fp[slots], self.spec.threshold)
        ok = shared >= self.spec.threshold
        slots = slots[ok]
        return tuple(
            Candidate(int(s) + 1, int(c), float(a), int(x), int(n), int(d))
            for s, c, a, x, n, d in zip(
                seqs[ok],
                self._client[slots],
                self._at[slots],
                self._session[slots],
                shared[ok],
                self._dims[slots],
                strict=True,
            )
        )

    def _insert(
        self,
        tenant: int,
        client: int,
        sha256: str,
        fp: np.ndarray,
        at: float,
        keys: Sequence[int],
        heads: Sequence[int],
        dims: int = 0,
        session_id: int = 0,
    ) -> int:
        seq = self._next
        slot = seq % self.capacity
        self._evict(slot)
        self._seq[slot], self._at[slot], self._tenant[slot] = seq, at, tenant
        self._client[slot], self._sha[slot], self._session[slot] = client, _sha64(sha256), session_id
        self._dims[slot] = dims
        self._fp[slot] = 0
        self._fp[slot, : min(fp.size, self.spec.top)] = fp[: self.spec.top]
        # the first look-up keys are the ones a query is stored under (index_keys), then the sha256's
        stored = min(self.indexed, len(keys) - 1)
        chosen = [*range(stored), len(keys) - 1]
        row_keys, row_prev = self._keys[slot], self._prev[slot]
        row_keys[:] = 0
        row_prev[:] = -1
        for column, k in enumerate(chosen):
            column = column if column < stored else self.indexed  # the sha256 keeps the last column
            row_keys[column], row_prev[column] = keys[k], heads[k]
            self._heads[keys[k]] = seq
        self._next += 1
        return seq

    def _evict(self, slot: int) -> None:
        """The slot's previous query leaves: the keys it was the newest holder of go from the dict."""
        old = int(self._seq[slot])
        if old < 0:
            return
        for key in self._keys[slot].tolist():
            if key and self._heads.get(key) == old:
                del self._heads[key]

    def _forget_old_sessions(self, at: float) -> None:
        if len(self._sessions) % 1024:
            return
        cutoff = at - self.window_s
        for name in [name for name, r in self._sessions.items() if r.last_at < cutoff]:
            del self._sessions[name]

    # -- persistence hooks (used by _SqliteStore) --
    def _row(self, seq: int) -> tuple[Any, ...] | None:
        slot = seq % self.capacity
        if self._seq[slot] != seq:
            return None
        fp = self._fp[slot]
        return (
            seq, float(self._at[slot]), int(self._tenant[slot]), int(self._client[slot]),
            int(self._sha[slot]).to_bytes(8, "big").hex(), int(self._session[slot]), fp[fp != 0].tobytes(),
            int(self._dims[slot]),
        )  # fmt: skip

    def _restore(self, rows: Sequence[tuple[Any, ...]], sessions: Sequence[tuple[Any, ...]]) -> None:
        for seq, at, tenant, client, sha16, session_id, blob, dims in rows:
            self._next = seq
            fp = np.frombuffer(blob, dtype=np.uint32)
            keys = self._salted(tenant, index_keys(fp, self.spec)[1], sha16)
            heads = [self._heads.get(key, -1) for key in keys]
            self._insert(tenant, client, sha16, fp, at, keys, heads, dims, session_id)
        for session_id, tenant, scope, opened_at, last_at, queries, clients in sessions:
            record = SessionRecord(session_id, tenant, scope, opened_at, last_at, queries)
            record.clients = {int(c) for c in clients.split(",") if c}
            self._sessions[(tenant, session_id)] = record


class _SqliteStore:
    """Write-behind persistence of a MemoryIndex: new queries and session changes are buffered and written in
    one transaction every ``flush_every`` changes or ``flush_s`` seconds (and on close), so the cost per query
    stays a list append; a crash loses at most that much.  Opening the file replays the window's queries.

    The stdlib ``sqlite3`` rather than SQLAlchemy: the file is the index's own, never the service's database,
    holds two tables, and is written from one thread; an engine and a metadata layer would add cost and
    nothing else."""

    def __init__(self, path: Path, index: MemoryIndex, flush_every: int = 512, flush_s: float = 1.0) -> None:
        self.index, self.flush_every, self.flush_s = index, flush_every, flush_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False)
        self.db.executescript(
            """
            PRAGMA journal_mode=WAL;
            PRAGMA synchronous=NORMAL;
            CREATE TABLE IF NOT EXISTS queries (seq INTEGER PRIMARY KEY, at REAL, tenant INTEGER, client INTEGER,
                sha TEXT, session INTEGER, fp BLOB, dims INTEGER);
            CREATE TABLE IF NOT EXISTS sessions (session INTEGER, tenant INTEGER, scope TEXT, opened_at REAL,
                last_at REAL, queries INTEGER, clients TEXT, PRIMARY KEY (tenant, session));
            """
        )
        self._added: list[int] = []
        self._joined: dict[tuple[int, int], tuple[SessionRecord, list[int]]] = {}
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()  # the buffers
        self._writing = threading.Lock()  # the connection: one transaction at a time
        self._load()

    def _load(self) -> None:
        cutoff = time.time() - self.index.window_s
        last = self.db.execute("SELECT max(seq) FROM queries").fetchone()[0]
        if last is None:
            return
        rows = self.db.execute(
            "SELECT seq, at, tenant, client, sha, session, fp, dims FROM queries"
            " WHERE seq > ? AND at >= ? ORDER BY seq",
            (last - self.index.capacity, cutoff),
        ).fetchall()
        sessions = self.db.execute(
            "SELECT session, tenant, scope, opened_at, last_at, queries, clients FROM sessions WHERE last_at >= ?",
            (cutoff,),
        ).fetchall()
        self.index._restore(rows, sessions)
        self.index._next = last + 1

    def added(self, seq: int) -> None:
        with self._lock:
            self._added.append(seq)
        self._maybe_flush()

    def joined(self, record: SessionRecord, query_ids: Sequence[int]) -> None:
        with self._lock:
            _, ids = self._joined.setdefault((record.tenant, record.session_id), (record, []))
            ids.extend(query_ids)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        pending = len(self._added) + len(self._joined)
        if pending >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            added, self._added = self._added, []
            joined, self._joined = self._joined, {}
            self._last_flush = time.monotonic()
        rows = [row for row in (self.index._row(seq) for seq in added) if row is not None]
        with self._writing, self.db:
            self.db.executemany("INSERT OR REPLACE INTO queries VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            for record, ids in joined.values():
                self.db.executemany(
                    "UPDATE queries SET session = ? WHERE seq = ?", [(record.session_id, i - 1) for i in ids]
                )
                self.db.execute(
                    "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (record.session_id, record.tenant, record.scope, record.opened_at, record.last_at,
                     record.queries, ",".join(str(c) for c in sorted(record.clients))),
                )  # fmt: skip
            if added:  # the ring's bound holds on disk too
                self.db.execute("DELETE FROM queries WHERE seq <= ?", (added[-1] - self.index.capacity,))

    def close(self) -> None:
        self.flush()
        with self._writing:
            self.db.close()


# --- in Redis -----------------------------------------------------------------------------------------------------
# One script per query, so the duplicate check, the look-up and the insertion are one atomic step for every API
# process.  Keys (prefix p, tenant t): p:seq (query ids), p:t:q:<id> (hash: client, time, session, values, sha),
# p:t:k:<value> (sorted set of the ids that index the value, the latest `depth` kept), p:t:sha:<sha256> (id),
# p:t:order (sorted set of the tenant's ids by time, for the per-tenant cap), p:t:s:<session> (hash) and its
# clients (set).  Every key has the window as TTL.  Single-node Redis (the keys are built in the script).
_OBSERVE = """
local p = ARGV[1] .. ':' .. ARGV[2]
local at, window = tonumber(ARGV[5]), tonumber(ARGV[6])
local depth, cap, indexed = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[10])
local ttl = math.ceil(window)
local shakey = p .. ':sha:' .. ARGV[4]
local dup = redis.call('GET', shakey)
if dup then
  local h = redis.call('HMGET', p .. ':q:' .. dup, 'a', 's')
  if h[1] and at - tonumber(h[1]) <= window then
    return {1, dup, h[2] or '0'}
  end
end
local seen, out = {}, {}
for i = 12, #ARGV do
  local ids = redis.call('ZREVRANGE', p .. ':k:' .. ARGV[i], 0, depth - 1)
  for _, id in ipairs(ids) do
    if not seen[id] then
      seen[id] = true
      local h = redis.call('HMGET', p .. ':q:' .. id, 'c', 'a', 's', 'f', 'd')
      if h[4] and at - tonumber(h[2]) <= window then
        out[#out + 1] = {id, h[1], h[2], h[3], h[4], h[5]}
      end
    end
  end
end
local qid = redis.call('INCR', ARGV[1] .. ':seq')
local qkey = p .. ':q:' .. qid
redis.call('HSET', qkey, 'c', ARGV[3], 'a', ARGV[5], 's', '0', 'f', ARGV[9], 'd', ARGV[11])
redis.call('EXPIRE', qkey, ttl)
redis.call('SET', shakey, qid, 'EX', ttl)
for i = 12, 11 + indexed do
  local k = p .. ':k:' .. ARGV[i]
  redis.call('ZADD', k, qid, qid)
  redis.call('ZREMRANGEBYRANK', k, 0, -(depth + 1))
  redis.call('EXPIRE', k, ttl)
end
local order = p .. ':order'
redis.call('ZADD', order, at, qid)
redis.call('ZREMRANGEBYSCORE', order, '-inf', '(' .. (at - window))
redis.call('EXPIRE', order, ttl)
local n = redis.call('ZCARD', order)
if n > cap then
  for _, id in ipairs(redis.call('ZRANGE', order, 0, n - cap - 1)) do
    redis.call('DEL', p .. ':q:' .. id)
  end
  redis.call('ZREMRANGEBYRANK', order, 0, n - cap - 1)
end
return {0, qid, out}
"""

_JOIN = """
local p = ARGV[1] .. ':' .. ARGV[2]
local skey = p .. ':s:' .. ARGV[3]
local ckey = skey .. ':c'
local ttl = math.ceil(tonumber(ARGV[7]))
if redis.call('EXISTS', skey) == 0 then
  redis.call('HSET', skey, 'scope', ARGV[6], 'opened', ARGV[5], 'last', ARGV[5], 'n', 0)
end
local added = 0
for i = 9, #ARGV do
  local q = p .. ':q:' .. ARGV[i]
  local s = redis.call('HGET', q, 's')
  if s and s ~= ARGV[3] then
    redis.call('HSET', q, 's', ARGV[3])
    added = added + 1
  end
end
redis.call('HINCRBY', skey, 'n', added)
if tonumber(ARGV[5]) > tonumber(redis.call('HGET', skey, 'last')) then
  redis.call('HSET', skey, 'last', ARGV[5])
end
if redis.call('SCARD', ckey) < tonumber(ARGV[8]) then
  redis.call('SADD', ckey, ARGV[4])
end
redis.call('EXPIRE', skey, ttl)
redis.call('EXPIRE', ckey, ttl)
return {redis.call('HMGET', skey, 'scope', 'opened', 'last', 'n'), redis.call('SMEMBERS', ckey)}
"""


class RedisIndex:
    """The same index in Redis, for every API process of a deployment (see the scripts above).

    ``tenant_capacity``: at most this many queries per tenant are kept (the oldest are dropped first); the
    deployment's memory bound is that times the tenants, or Redis' ``maxmemory`` (every key has a TTL, so a
    ``volatile-*`` eviction policy applies to all of them)."""

    def __init__(
        self,
        url_or_client: str | Any,
        window_s: float = 6 * 3600.0,
        spec: Spec = DEFAULT,
        chain_depth: int = 16,
        tenant_capacity: int = 1_000_000,
        prefix: str = "shield",
    ) -> None:
        import redis  # the embedded service runs without it

        self.client = redis.Redis.from_url(url_or_client) if isinstance(url_or_client, str) else url_or_client
        self.spec, self.window_s, self.chain_depth = spec, window_s, chain_depth
        self.tenant_capacity, self.prefix = tenant_capacity, prefix
        self.indexed = indexed_count(spec)
        self._observe = self.client.register_script(_OBSERVE)
        self._join = self.client.register_script(_JOIN)

    def observe(
        self, tenant: int, client: str, sha256: str, fp: np.ndarray, at: float | None = None, dims: int = 0
    ) -> Observation:
        at = time.time() if at is None else at
        fp = np.asarray(fp, dtype=np.uint32)
        lookup = [str(k) for k in index_keys(fp, self.spec)[1].tolist()]
        values = ",".join(str(v) for v in fp.tolist())
        stored = min(self.indexed, len(lookup))
        argv = [self.prefix, tenant, client_key(client), sha256, repr(float(at)), repr(float(self.window_s)),
                self.chain_depth, self.tenant_capacity, values, stored, dims, *lookup]  # fmt: skip
        reply = self._observe(args=argv)
        if int(reply[0]) == 1:
            return Observation(int(reply[1]), True, int(reply[2] or 0))
        return Observation(int(reply[1]), False, 0, self._verified(np.asarray(fp, dtype=np.uint32), reply[2]))

    def _verified(self, fp: np.ndarray, rows: Sequence[Sequence[bytes]]) -> tuple[Candidate, ...]:
        if not rows:
            return ()
        rows = sorted(rows, key=lambda row: int(row[0]))
        stored = np.zeros((len(rows), self.spec.top), dtype=np.uint32)
        for i, row in enumerate(rows):
            values = np.array(row[4].split(b","), dtype=np.uint32) if row[4] else np.zeros(0, np.uint32)
            stored[i, : values.size] = values[: self.spec.top]
        shared = verify(fp, stored, self.spec.threshold)
        return tuple(
            Candidate(int(row[0]), int(row[1]), float(row[2]), int(row[3]), int(n), int(row[5]))
            for row, n in zip(rows, shared, strict=True)
            if n >= self.spec.threshold
        )

    def join(
        self, tenant: int, session_id: int, query_ids: Sequence[int], client: str, at: float, scope: str
    ) -> SessionRecord:
        argv = [self.prefix, tenant, session_id, client_key(client), repr(float(at)), scope,
                repr(float(self.window_s)), MAX_SESSION_CLIENTS, *query_ids]  # fmt: skip
        fields, clients = self._join(args=argv)
        return _session_record(tenant, session_id, fields, clients)

    def session(self, tenant: int, session_id: int) -> SessionRecord | None:
        key = f"{self.prefix}:{tenant}:s:{session_id}"
        fields = self.client.hmget(key, "scope", "opened", "last", "n")
        if fields[0] is None:
            return None
        return _session_record(tenant, session_id, fields, self.client.smembers(f"{key}:c"))

    def close(self) -> None:
        self.client.close()


def _session_record(tenant: int, session_id: int, fields: Sequence[bytes], clients: Any) -> SessionRecord:
    scope, opened, last, count = fields
    record = SessionRecord(session_id, tenant, scope.decode(), float(opened), float(last), int(count))
    record.clients = {int(c) for c in clients}
    return record
