"""Prometheus metrics of one app instance (own registry, so several apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("ctrzoo_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("ctrzoo_request_seconds", "Server-side latency of /rank",
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
                                 registry=self.registry)
        self.candidates = Counter("ctrzoo_candidates_scored_total", "Candidates scored by /rank",
                                  registry=self.registry)
        self.model = Gauge("ctrzoo_model_info", "The model being served (value 1)", ["name", "version"],
                           registry=self.registry)
        self.reloads = Counter("ctrzoo_reloads_total", "Bundle reloads by outcome", ["outcome"], registry=self.registry)

    def set_model(self, name: str, version: str) -> None:
        self.model.clear()
        self.model.labels(name=name, version=version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
