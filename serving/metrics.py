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
        # names, not values: a client whose feature names drifted from the model's shows here, not as flat scores
        self.unknown_names = Counter("ctrzoo_unknown_feature_names_total",
                                     "Request feature names the model does not read (ignored or refused)",
                                     ["endpoint"], registry=self.registry)
        self.absent_requests = Counter("ctrzoo_requests_with_absent_features_total",
                                       "Requests in which some feature the model reads was not named",
                                       ["endpoint"], registry=self.registry)
        self.absent_features = Counter("ctrzoo_absent_features_total",
                                       "Model features absent from requests, summed over requests",
                                       ["endpoint"], registry=self.registry)
        self.reloads = Counter("ctrzoo_reloads_total", "Bundle reloads by outcome", ["outcome"], registry=self.registry)

    def set_model(self, name: str, version: str) -> None:
        self.model.clear()
        self.model.labels(name=name, version=version).set(1)

    def count_names(self, endpoint: str, absent: list, unknown: list) -> None:
        if unknown:
            self.unknown_names.labels(endpoint=endpoint).inc(len(unknown))
        if absent:
            self.absent_requests.labels(endpoint=endpoint).inc()
            self.absent_features.labels(endpoint=endpoint).inc(len(absent))

    def render(self) -> bytes:
        return generate_latest(self.registry)
