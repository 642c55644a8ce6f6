"""Prometheus metrics of one API process (its own registry, so several apps in one test process never clash)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "scanner_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "scanner_http_request_seconds",
            "HTTP request latency",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.images = Counter(
            "scanner_images_submitted",
            "images submitted, by outcome (known verdict, queued, refused)",
            ["outcome"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "scanner_refusals", "requests refused, by problem code", ["code"], registry=self.registry
        )
        self.event_streams = Gauge("scanner_open_event_streams", "event streams (SSE) open now", registry=self.registry)
