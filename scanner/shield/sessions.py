"""The decision: is this query part of a query attack?

A query opens an attack session when, within the window, it matches

- at least ``client_matches`` earlier queries of the same client at its own width and height, or
  ``client_matches_any_size`` at any size (one attacker, one identity).  An attack perturbs one tensor, so its
  queries keep their size; the same picture a client fetches at several sizes (srcset, CDN resizes,
  thumbnails) is a handful of matches at different sizes.  An attacker who resizes every query to hide is
  caught at the higher count, not never;
- at least ``tenant_matches`` earlier queries of the tenant at its size, among which at least
  ``tenant_repeat_clients`` clients sent ``tenant_repeat_queries`` or more (counting this query): one attacker
  spread over several accounts of the customer's service.  Only same-size matches count here: many users
  uploading the same meme once each, or browsers that each fetch a popular picture at a few sizes, do not open
  one.  An attacker who uses a fresh account for every two queries, or resizes every query while spreading
  them, is not caught by this rule (QPA-style provenance is the known answer); each of his accounts still is
  by the client rule once it sends enough;

and it extends a session when it matches at least ``extend_matches`` queries already in one (a persistent
attacker stays in the session however he spreads his queries; a benign upload of the very picture under
attack, within the window, joins it too).  The earlier queries it matched join the session with it.  An exact
duplicate (same sha256) is no new query: it gets its first sighting's session.

The policy (``Policy``) is the API's to apply: ``off`` skips the shield, ``observe`` marks the verdicts of a
session's queries, ``reject`` refuses them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image

from scanner.shield.fingerprint import fingerprint
from scanner.shield.index import Candidate, Index, client_key, pack_dims


class Policy(StrEnum):
    OFF = "off"
    OBSERVE = "observe"
    REJECT = "reject"

    @property
    def marks(self) -> bool:
        return self is not Policy.OFF

    def refuses(self, result: ShieldResult) -> bool:
        return self is Policy.REJECT and result.in_session


@dataclass(frozen=True)
class Thresholds:
    client_matches: int = 6
    client_matches_any_size: int = 15
    tenant_matches: int = 10
    tenant_repeat_clients: int = 3
    tenant_repeat_queries: int = 3
    extend_matches: int = 1


@dataclass(frozen=True)
class ShieldResult:
    query_id: int  # the shield's id of the query (a duplicate's: its first sighting's)
    duplicate: bool
    session_id: int | None
    opened: bool  # this query opened the session
    scope: str | None  # client or tenant: what opened the session
    matched: tuple[int, ...]  # the earlier queries it matched
    session_queries: int  # queries in the session so far (0 outside one)

    @property
    def in_session(self) -> bool:
        return self.session_id is not None


class Shield:
    """Fingerprint, look up, decide, record: ``check`` once per image the service receives."""

    def __init__(self, index: Index, thresholds: Thresholds | None = None) -> None:
        self.index = index
        self.thresholds = thresholds or Thresholds()

    def check(
        self,
        tenant: int,
        client: str,
        sha256: str,
        image: Image.Image | np.ndarray | None = None,
        *,
        fp: np.ndarray | None = None,
        size: tuple[int, int] | None = None,
        at: float | None = None,
    ) -> ShieldResult:
        """``image`` (its fingerprint is taken here), or ``fp`` and the image's (width, height) as ``size``."""
        if fp is None:
            if image is None:
                raise ValueError("check needs the image or its fingerprint")
            fp = fingerprint(image, self.index.spec)
        if size is None and image is not None:
            size = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])
        dims = pack_dims(*size) if size is not None else 0
        at = time.time() if at is None else at
        seen = self.index.observe(tenant, client, sha256, fp, at, dims)
        if seen.duplicate:
            return self._duplicate(tenant, seen.query_id, seen.session_id)
        matched = seen.matches
        decided = self._decide(matched, client_key(client), dims)
        if decided is None:
            return ShieldResult(seen.query_id, False, None, False, None, tuple(m.query_id for m in matched), 0)
        session_id, scope = decided
        opened = session_id == 0
        session_id = session_id or seen.query_id  # a new session is named after the query that opened it
        joining = [seen.query_id, *(m.query_id for m in matched if m.session_id == 0)]
        record = self.index.join(tenant, session_id, joining, client, at, scope)
        return ShieldResult(
            seen.query_id, False, session_id, opened, record.scope, tuple(m.query_id for m in matched), record.queries
        )

    def _decide(self, matched: tuple[Candidate, ...], client: int, dims: int) -> tuple[int, str] | None:
        """(session to extend, or 0 to open one; scope), or None when the query is in no session."""
        t = self.thresholds
        in_sessions = [m.session_id for m in matched if m.session_id]
        if in_sessions and len(in_sessions) >= t.extend_matches:
            # the newest session it touches; its scope stays (this one only names a session that expired)
            return max(in_sessions), "client" if all(m.client == client for m in matched) else "tenant"
        same_size = [m for m in matched if dims and m.dims == dims]
        mine = sum(m.client == client for m in matched)
        if sum(m.client == client for m in same_size) >= t.client_matches or mine >= t.client_matches_any_size:
            return 0, "client"
        repeat = _repeat_clients(same_size, client, t.tenant_repeat_queries)
        if len(same_size) >= t.tenant_matches and repeat >= t.tenant_repeat_clients:
            return 0, "tenant"
        return None

    def _duplicate(self, tenant: int, query_id: int, session_id: int) -> ShieldResult:
        record = self.index.session(tenant, session_id) if session_id else None
        if record is None:
            return ShieldResult(query_id, True, None, False, None, (), 0)
        return ShieldResult(query_id, True, session_id, False, record.scope, (), record.queries)


def _repeat_clients(matched: list[Candidate], client: int, queries: int) -> int:
    """Clients with at least ``queries`` queries among the matched ones and this one."""
    counts = Counter(m.client for m in matched)
    counts[client] += 1
    return sum(n >= queries for n in counts.values())
