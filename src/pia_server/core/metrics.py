"""Prometheus metrics, on a registry owned by one app (tests build as many apps as they like)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "pia_http_requests_total",
            "HTTP requests by route template, method and status",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "pia_http_request_duration_seconds",
            "HTTP request latency by route template and method",
            ("method", "route"),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "pia_rate_limit_refusals_total",
            "Requests refused by a rate-limit policy",
            ("policy",),
            registry=self.registry,
        )
        self.rate_limit_fallbacks = Counter(
            "pia_rate_limit_redis_fallbacks_total",
            "Times the rate limiter fell back to in-process storage because Redis failed",
            registry=self.registry,
        )
