"""What `tte-serve` reports at ``/metrics``, in the Prometheus text format (prometheus_client).

Each service has its own registry, so several services (or tests) in one process do not mix their
counts.

May import: prometheus_client (the ``serve`` extra).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()           # no *_created series: they double the page and say little

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Latency buckets in seconds: fine below 10 ms, where a recommendation usually is.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Counters, gauges and histograms of one service.

    Attributes:
      requests: requests answered, by endpoint and HTTP status code.
      errors: requests answered with a 4xx or 5xx status, by endpoint and code.
      latency: seconds from a request's arrival to its answer, by endpoint.
      version: the model version serving now (0 before the first is loaded).
      loads: version loads, by outcome (``loaded`` or ``failed``).
      load_seconds: seconds the last successful load (with warm-up) took.
      last_failed_version: the version whose load failed last (0 when none has).
      batch_size: users per micro-batch (one tower call and one search).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter("tte_serve_requests", "Requests answered, by endpoint and status "
                                "code.", ["endpoint", "code"], registry=registry)
        self.errors = Counter("tte_serve_errors", "Requests answered with a 4xx or 5xx status.",
                              ["endpoint", "code"], registry=registry)
        self.latency = Histogram("tte_serve_request_duration_seconds", "Seconds from a request's "
                                 "arrival to its answer.", ["endpoint"], buckets=LATENCY_BUCKETS,
                                 registry=registry)
        self.version = Gauge("tte_serve_model_version", "The model version serving now (0: none "
                             "loaded yet).", registry=registry)
        self.loads = Counter("tte_serve_version_loads", "Version loads, by outcome (loaded or "
                             "failed).", ["outcome"], registry=registry)
        self.load_seconds = Gauge("tte_serve_version_load_seconds", "Seconds the last successful "
                                  "load and warm-up took.", registry=registry)
        self.last_failed_version = Gauge("tte_serve_last_failed_version", "The version whose "
                                         "load failed last (0: none).", registry=registry)
        self.batch_size = Histogram("tte_serve_batch_size", "Users answered by one tower call "
                                    "and one search.", buckets=BATCH_BUCKETS, registry=registry)
        for outcome in ("loaded", "failed"):
            self.loads.labels(outcome=outcome)

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        """Counts one answered request."""
        self.requests.labels(endpoint=endpoint, code=str(code)).inc()
        if code >= 400:
            self.errors.labels(endpoint=endpoint, code=str(code)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def loaded(self, version: int, seconds: float) -> None:
        self.loads.labels(outcome="loaded").inc()
        self.load_seconds.set(seconds)
        self.version.set(version)

    def failed(self, version: int | None) -> None:
        self.loads.labels(outcome="failed").inc()
        self.last_failed_version.set(version or 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
