"""Request and response bodies.  They validate input and generate the OpenAPI document (``openapi.py``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

Source = Literal["extension", "crawl", "audit", "api"]


class ScanRequest(BaseModel):
    """Image URLs found on a page; each is fetched by the service under the SSRF rules."""

    model_config = ConfigDict(extra="forbid")
    page_url: str | None = Field(None, max_length=4096, description="the page the images were seen on")
    image_urls: list[str] = Field(min_length=1, description="http(s) URLs of the images")
    source: Source = "api"


class FeedbackRequest(BaseModel):
    """A person's judgement of the current verdict on an image."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["false_flag", "missed"] = Field(description="false_flag: flagged but clean; missed: the reverse")
    page_url: str | None = Field(None, max_length=4096)
    note: str | None = Field(None, max_length=2000)


class FeedbackOut(BaseModel):
    id: int
    sha256: str
    kind: Literal["false_flag", "missed"]
    model_version: str
    calibration_version: str
    created_at: dt.datetime


class ItemError(BaseModel):
    code: str
    message: str


class VerdictOut(BaseModel):
    label: str | None = Field(description="the robust model's class; null: no confident class (not one of its classes)")
    confidence: float
    in_domain: float | None = Field(description="0-1: how sure the model is that the image shows one of its classes")
    top_k: list[tuple[str, float]]
    scores: dict[str, float]
    score: float | None = Field(description="combined detector score (higher = more likely perturbed)")
    threshold: float | None
    flagged: bool | None = Field(description="score above the calibrated threshold; null when uncalibrated")
    model_version: str
    calibration_version: str
    timings_ms: dict[str, float]
    analysed_at: dt.datetime


class ScanItemOut(BaseModel):
    position: int
    image_url: str | None
    filename: str | None
    sha256: str | None
    state: Literal["pending", "done", "failed"]
    error: ItemError | None
    verdict: VerdictOut | None
    false_flag: bool = Field(False, description="this tenant has called the image a false flag (feedback)")


class Counts(BaseModel):
    total: int
    pending: int
    done: int
    failed: int
    flagged: int


class ScanOut(BaseModel):
    id: str
    status: Literal["queued", "running", "done"]
    source: Source
    page_url: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    model_version: str
    calibration_version: str
    counts: Counts
    items: list[ScanItemOut]


class SightingOut(BaseModel):
    site: str | None
    page_url: str | None
    image_url: str | None
    source: Source
    seen_at: dt.datetime


class ImageOut(BaseModel):
    sha256: str
    format: str
    byte_size: int
    width: int
    height: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    sightings: int
    recent_sightings: list[SightingOut]
    verdicts: list[VerdictOut]
    feedback: dict[str, int] = Field(description="this tenant's feedback on the image, counted by kind")


class FlaggedRow(BaseModel):
    sha256: str
    label: str | None
    confidence: float
    in_domain: float | None
    score: float | None
    threshold: float | None
    site: str | None
    page_url: str | None
    image_url: str | None
    seen_at: dt.datetime
    analysed_at: dt.datetime
    model_version: str
    calibration_version: str
    false_flag: bool = Field(description="this tenant has called the image a false flag")


class FlaggedReport(BaseModel):
    items: list[FlaggedRow]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


ComponentState = Literal["ok", "degraded", "down", "unknown", "not_used"]


class HealthComponents(BaseModel):
    """Each part's state, so that a degraded service says which part is degraded."""

    database: ComponentState
    broker: ComponentState = Field(description="not_used in the embedded mode")
    workers: ComponentState = Field(description="degraded when no worker process beats: work is not consumed")
    queue: ComponentState = Field(description="degraded when an image waits longer than the requeue interval")


class Health(BaseModel):
    status: Literal["ok", "degraded", "down"]
    mode: Literal["embedded", "distributed"]
    database: bool
    broker: bool | None
    oldest_pending_s: float | None = Field(description="age of the oldest unfinished image: proves consumption")
    workers: int | None = Field(description="live worker processes (their heartbeats); null when unknown")
    components: HealthComponents
    checked_s_ago: float = Field(description="age of the probe results (probed in the background)")
    model_version: str
    calibration_version: str


class KeyOut(BaseModel):
    """The key a request was made with (never its secret)."""

    id: str
    name: str
    tenant: str
    scopes: list[str]
    expires_at: dt.datetime | None


class ProblemOut(BaseModel):
    type: str
    title: str
    status: int
    code: str
    detail: str
    model_config = ConfigDict(extra="allow")


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


# --- audits ------------------------------------------------------------------------------------------------------


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: 5 and 5.0, never true or "5" (the model is strict otherwise)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


class AuditRequest(BaseModel):
    """A scheduled audit of a site: ``every`` (an interval) or ``cron`` (5 fields, UTC), not both."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no coercion: the document says what is taken
    start_url: str = Field(max_length=4096, description="where the crawl starts: an absolute http(s) URL")
    every: str = Field(
        None,  # type: ignore[assignment] - absent, never null
        max_length=20,
        description="interval: 30s, 15m, 6h, 1d",
    )
    cron: str = Field(
        None,  # type: ignore[assignment] - absent, never null
        max_length=100,
        description='5-field cron expression in UTC, e.g. "0 3 * * *"',
    )
    name: str | None = Field(None, max_length=200)
    max_pages: JsonInt = Field(100, ge=1, le=100_000)
    max_depth: JsonInt = Field(5, ge=0, le=100)
    include: list[str] = Field(default_factory=list, max_length=20, description="regexes a URL must match")
    exclude: list[str] = Field(default_factory=list, max_length=20, description="regexes that exclude a URL")
    webhook_url: str = Field(
        None,  # type: ignore[assignment] - absent, never null
        max_length=4096,
        description="POST a signed summary of each run here",
    )
    webhook_secret: str = Field(
        None,  # type: ignore[assignment] - absent, never null
        min_length=8,
        max_length=200,
        description="HMAC-SHA256 key",
    )
    missed_run_policy: Literal["run-once", "skip"] = "run-once"
    enabled: bool = True
    robustness_sample: JsonInt = Field(
        0, ge=0, le=256, description="images each run attacks with Square (black box, eps 8/255); 0: no check"
    )


class AuditOut(BaseModel):
    """An audit (never its webhook secret)."""

    id: int
    name: str
    site: str
    start_url: str
    schedule: str
    max_pages: int
    max_depth: int
    include: list[str]
    exclude: list[str]
    webhook_url: str | None
    missed_run_policy: Literal["run-once", "skip"]
    enabled: bool
    robustness_sample: int
    allow_private: bool = Field(
        description="may crawl private addresses and any port: set only by `scanner audit add --allow-private` "
        "on the server's machine; audits made through the API follow the server's fetch rules"
    )
    created_at: dt.datetime
    last_run_at: dt.datetime | None
    next_run_at: dt.datetime | None


class AuditList(BaseModel):
    items: list[AuditOut]


class RobustnessOut(BaseModel):
    sample: int
    flipped: int
    skipped: int
    eps: float
    queries: int
    flip_rate: float
    model_version: str


class AuditRunOut(BaseModel):
    id: int
    audit_id: int
    status: Literal["queued", "running", "done", "failed", "missed"] = Field(
        description="queued: waiting for the tenant's (audit_runs_per_tenant) or the runner's limit of runs at once"
    )
    trigger: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    pages: int
    images: int
    flagged: int
    newly_flagged: int
    gone: int
    changed: int
    error: str | None = Field(description="why a failed run failed, for people")
    error_code: str | None = Field(
        description="why a failed run failed, stable: a fetch refusal (blocked_address, blocked_port, dns_failure, "
        "bad_url), no_page (no page could be crawled), lock_expired (its runner stopped) or crawl_error"
    )
    robustness: RobustnessOut | None = Field(description="the black-box attack's result, when the audit asks")


class AuditRunList(BaseModel):
    items: list[AuditRunOut]
