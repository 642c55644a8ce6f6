"""Request and response bodies.  They validate input and generate the OpenAPI document (``openapi.py``)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    label: str
    confidence: float
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
    label: str
    confidence: float
    score: float | None
    threshold: float | None
    site: str | None
    page_url: str | None
    image_url: str | None
    seen_at: dt.datetime
    analysed_at: dt.datetime
    model_version: str
    calibration_version: str


class FlaggedReport(BaseModel):
    items: list[FlaggedRow]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


class Health(BaseModel):
    status: Literal["ok", "degraded", "down"]
    mode: Literal["embedded", "distributed"]
    database: bool
    broker: bool | None
    oldest_pending_s: float | None = Field(description="age of the oldest unfinished image: proves consumption")
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
