"""The schema: SQLAlchemy 2 typed models.  Changes go through Alembic migrations in ``migrations/``.

Images are global and keyed by the sha256 of their bytes, so one analysis serves every tenant that meets the
same bytes; everything a tenant can *see* goes through its own rows (sightings, scans, sites, keys), and
every query of ``scanner.db.queries`` filters on the tenant.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so that migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SOURCES = ("extension", "crawl", "audit", "api")
ITEM_STATES = ("pending", "done", "failed")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """Only the SHA-256 of the secret is stored; ``id`` is the public part of the key, used for lookup."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(200))  # space-separated, like OAuth
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]
    tenant: Mapped[Tenant] = relationship()


class Site(Base):
    __tablename__ = "sites"
    __table_args__ = (UniqueConstraint("tenant_id", "host"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    host: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Image(Base):
    """One distinct image file (by the sha256 of its bytes), whoever met it."""

    __tablename__ = "images"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    format: Mapped[str] = mapped_column(String(16))
    byte_size: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int]
    height: Mapped[int]
    first_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Deliveries of an analysis that started and did not finish: counts toward dead-lettering a poison input.
    attempts: Mapped[int] = mapped_column(default=0)


class ImageBlob(Base):
    """The bytes, kept so that any worker can (re-)analyse an image, also with a newer model."""

    __tablename__ = "image_blobs"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Scan(Base):
    """A submitted batch of images."""

    __tablename__ = "scans"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(16))
    page_url: Mapped[str | None] = mapped_column(Text)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="SET NULL"))
    model_version: Mapped[str] = mapped_column(String(80))
    calibration_version: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[dt.datetime | None]
    items: Mapped[list[ScanItem]] = relationship(back_populates="scan", order_by="ScanItem.position")


class ScanItem(Base):
    """One image of a scan.  ``enqueued_at`` is the outbox mark: NULL until the analysis was handed to the
    broker, so a broker outage delays the work but never loses it."""

    __tablename__ = "scan_items"
    __table_args__ = (
        UniqueConstraint("scan_id", "position"),
        Index("ix_scan_items_pending", "state", "enqueued_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[str] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    position: Mapped[int]
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), index=True)
    image_url: Mapped[str | None] = mapped_column(Text)
    filename: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(8), default="pending")
    error_code: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    enqueued_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    scan: Mapped[Scan] = relationship(back_populates="items")


class Sighting(Base):
    """Where and when a tenant met an image."""

    __tablename__ = "sightings"
    __table_args__ = (
        Index("ix_sightings_tenant_image", "tenant_id", "image_id"),
        Index("ix_sightings_tenant_site", "tenant_id", "site_id", "seen_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="SET NULL"))
    scan_id: Mapped[str | None] = mapped_column(ForeignKey("scans.id", ondelete="SET NULL"))
    page_url: Mapped[str | None] = mapped_column(Text)
    image_url: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Verdict(Base):
    """One analysis of one image by one model pair and one detector calibration; written once."""

    __tablename__ = "verdicts"
    __table_args__ = (
        UniqueConstraint("image_id", "model_version", "calibration_version"),
        Index("ix_verdicts_flagged_created", "flagged", "created_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(String(80))
    calibration_version: Mapped[str] = mapped_column(String(40))
    label: Mapped[str | None] = mapped_column(String(100))  # None: no confident class (outside its classes)
    label_index: Mapped[int]
    confidence: Mapped[float] = mapped_column(Float)
    in_domain: Mapped[float | None] = mapped_column(Float)  # how sure the model is the image is one of its classes
    top_k: Mapped[list[Any]]
    scores: Mapped[dict[str, Any]]
    combined: Mapped[float | None] = mapped_column(Float)
    flagged: Mapped[bool | None] = mapped_column(Boolean)
    threshold: Mapped[float | None] = mapped_column(Float)
    timings_ms: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Feedback(Base):
    """A person's judgement of a verdict: "this is a false flag" (or a missed one), from the extension."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_tenant_image", "tenant_id", "image_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(16))  # false_flag / missed
    model_version: Mapped[str] = mapped_column(String(80))
    calibration_version: Mapped[str] = mapped_column(String(40))
    page_url: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DeadLetter(Base):
    """An image whose analysis kept failing (or killed its worker) ``max_deliveries`` times."""

    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[str] = mapped_column(String(80))
    task_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    deliveries: Mapped[int]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Audit(Base):
    """A recurring audit of a site (scheduled by Celery beat in the audits issue)."""

    __tablename__ = "audits"
    # Ids are never reused after a delete (SQLite reuses the largest rowid without AUTOINCREMENT): migration 0007.
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    start_url: Mapped[str] = mapped_column(Text)
    schedule: Mapped[str] = mapped_column(String(100))  # cron expression
    max_pages: Mapped[int] = mapped_column(default=100)
    missed_run_policy: Mapped[str] = mapped_column(String(16), default="run-once")  # or "skip"
    # Images attacked by the optional black-box robustness check of each run (0: no check).
    robustness_sample: Mapped[int] = mapped_column(default=0, server_default="0")
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_run_at: Mapped[dt.datetime | None]
    next_run_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    # Added with the audits feature (migration 0003): the rest of the crawl options and the webhook.
    max_depth: Mapped[int] = mapped_column(default=5, server_default="5")
    include: Mapped[list[Any] | None]
    exclude: Mapped[list[Any] | None]
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # Encrypted at rest (scanner.secretbox): a Fernet token of a secret of up to 200 characters.
    webhook_secret: Mapped[str | None] = mapped_column(String(400))
    # Migration 0007: the machine's owner let this audit crawl private addresses and any port (`scanner audit add
    # --allow-private`, for a local or staging site); the API never sets it.
    allow_private: Mapped[bool] = mapped_column(default=False, server_default=sa_false())


class AuditRun(Base):
    __tablename__ = "audit_runs"
    __table_args__ = {"sqlite_autoincrement": True}  # ids never reused: see Audit
    id: Mapped[int] = mapped_column(primary_key=True)
    audit_id: Mapped[int] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"), index=True)
    scan_id: Mapped[str | None] = mapped_column(ForeignKey("scans.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default="running")  # queued / running / done / failed / missed
    # The run lock: one runner holds it until it expires, so a crashed runner cannot block the audit forever.
    locked_by: Mapped[str | None] = mapped_column(String(100))
    lock_expires_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    pages: Mapped[int] = mapped_column(default=0)
    images: Mapped[int] = mapped_column(default=0)
    flagged: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # Migration 0007: why a failed run failed, a stable code (blocked_address, no_page, crawl_error, ...).
    error_code: Mapped[str | None] = mapped_column(String(40))
    # Added with the audits feature (migration 0003): how it started and the diff against the previous run.
    trigger: Mapped[str] = mapped_column(String(16), default="manual", server_default="manual")  # or "schedule"
    newly_flagged: Mapped[int] = mapped_column(default=0, server_default="0")
    gone: Mapped[int] = mapped_column(default=0, server_default="0")
    changed: Mapped[int] = mapped_column(default=0, server_default="0")
    diff: Mapped[dict[str, Any] | None]
    robustness: Mapped[dict[str, Any] | None]  # the robustness check's result, when the audit asks for one


class AuditRunImage(Base):
    """One image a run met: the snapshot the next run is compared with."""

    __tablename__ = "audit_run_images"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("audit_runs.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    sha256: Mapped[str] = mapped_column(String(64))
    url: Mapped[str | None] = mapped_column(Text)
    flagged: Mapped[bool | None] = mapped_column(Boolean)
    label: Mapped[str | None] = mapped_column(String(100))
    score: Mapped[float | None] = mapped_column(Float)


class WebhookDelivery(Base):
    """One attempt to deliver a run's summary to the audit's webhook."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("audit_runs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int]
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


__all__ = [
    "ITEM_STATES",
    "SOURCES",
    "ApiKey",
    "Audit",
    "AuditRun",
    "AuditRunImage",
    "Base",
    "DeadLetter",
    "Feedback",
    "Image",
    "ImageBlob",
    "Scan",
    "ScanItem",
    "Sighting",
    "Site",
    "Tenant",
    "Verdict",
    "WebhookDelivery",
    "utcnow",
]
