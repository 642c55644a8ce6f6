"""API keys: ``rsk_<id>_<secret>``.  The id finds the row; only the secret's SHA-256 is stored, compared in
constant time.  A key is shown once, at creation."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from scanner.db.models import ApiKey, Tenant, utcnow

PREFIX = "rsk"
SCOPES = ("scans:write", "reports:read")
_KEY = re.compile(rf"^{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})$")


class AuthError(Exception):
    """Why a presented key does not authenticate; ``code`` is the API's problem code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class NewKey:
    id: str
    token: str  # the full key: shown once, never stored
    tenant: str
    scopes: tuple[str, ...]
    expires_at: dt.datetime | None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(
    session: Session,
    name: str,
    tenant: str = "default",
    scopes: tuple[str, ...] = SCOPES,
    expires_in: dt.timedelta | None = None,
) -> NewKey:
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}")
    owner = get_or_create_tenant(session, tenant)
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    expires_at = utcnow() + expires_in if expires_in else None
    session.add(
        ApiKey(
            id=key_id,
            tenant_id=owner.id,
            name=name,
            secret_sha256=_digest(secret),
            scopes=" ".join(scopes),
            expires_at=expires_at,
        )
    )
    session.flush()
    return NewKey(key_id, f"{PREFIX}_{key_id}_{secret}", tenant, tuple(scopes), expires_at)


def authenticate(session: Session, token: str, now: dt.datetime | None = None) -> ApiKey:
    """The key row for ``token``, or ``AuthError`` with code invalid_key / revoked_key / expired_key."""
    match = _KEY.match(token)
    if match is None:
        raise AuthError("invalid_key", "the API key is malformed")
    key = session.get(ApiKey, match.group(1))
    # Compare even when the id is unknown, so that timing does not tell which ids exist.
    stored = key.secret_sha256 if key is not None else "0" * 64
    if not hmac.compare_digest(stored, _digest(match.group(2))) or key is None:
        raise AuthError("invalid_key", "the API key is not valid")
    if key.revoked_at is not None:
        raise AuthError("revoked_key", f"the API key {key.id} was revoked")
    if key.expires_at is not None and key.expires_at <= (now or utcnow()):
        raise AuthError("expired_key", f"the API key {key.id} expired at {key.expires_at.isoformat()}")
    return key


def revoke(session: Session, key_id: str) -> bool:
    key = session.get(ApiKey, key_id)
    if key is None:
        return False
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return True


def delete_short_lived(session: Session, name: str, key_id: str | None = None) -> int:
    """Delete the key ``key_id`` of ``name``, and every expired key of that name: a command's own short-lived
    keys must not pile up in `scanner keys list` (one left by a killed process goes once it has expired)."""
    stale = (ApiKey.expires_at.is_not(None)) & (ApiKey.expires_at < utcnow())
    query = delete(ApiKey).where(ApiKey.name == name, stale | (ApiKey.id == key_id) if key_id else stale)
    return session.execute(query).rowcount  # type: ignore[attr-defined]
