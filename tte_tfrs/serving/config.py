"""ServeConfig: how `tte-serve` serves an export folder, validated in one place.

May import: tte_tfrs.training.config (ConfigBase), tte_tfrs.retrieval (backend names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import ClassVar

from tte_tfrs.retrieval.registry import BACKENDS, DEFAULT_BACKEND
from tte_tfrs.training.config import Check, ConfigBase, finite_number, whole_number


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeConfig(ConfigBase):
    """An HTTP service over the current version of one export folder.

    Attributes:
      output_dir: export root written by tte-train; the service follows its current version.
      backend: retrieval backend whose saved index (tte-index) each version is searched with.
      host: address to bind; the loopback address unless another one is asked for.
      port: TCP port to listen on.
      poll_interval_s: seconds between two looks at the export's manifest.json for a new current
        version (a new export or a rollback).
      index_wait_s: a new version without a saved index of the backend keeps the old version
        serving until tte-index has saved one, at most this many seconds; then an index is built
        in memory (0: build at once).
      retry_interval_s: seconds before a version that failed to load is tried again (a different
        current version is tried at once).
      max_k: the most items one recommendation may ask for.
      max_batch_users: the most users in one batch request.
      max_score_items: the most items one score request may name.
      max_body_bytes: the largest request body accepted; larger ones get 413.
      micro_batch: the most concurrent single-user requests answered by one tower call and one
        batched search (1 answers each request alone).
      exit_after_s: stop serving after this many seconds (0: serve until stopped); for bounded
        benchmark and test runs.
    """

    output_dir: str = "saved_models"
    backend: str = DEFAULT_BACKEND
    host: str = "127.0.0.1"
    port: int = 8080
    poll_interval_s: float = 1.0
    index_wait_s: float = 60.0
    retry_interval_s: float = 30.0
    max_k: int = 1000
    max_batch_users: int = 256
    max_score_items: int = 1000
    max_body_bytes: int = 65536
    micro_batch: int = 64
    exit_after_s: float = 0.0

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"backend": tuple(BACKENDS)}

    def _checks(self) -> Iterator[Check]:
        yield "output_dir", isinstance(self.output_dir, str) and bool(self.output_dir), \
            "must name an export folder"
        yield "backend", self.backend in BACKENDS, f"must be one of {', '.join(BACKENDS)}"
        yield "host", isinstance(self.host, str) and bool(self.host.strip()), "must be an address"
        yield "port", whole_number(self.port, 0) and self.port <= 65535, "must be in 0..65535"
        yield "poll_interval_s", finite_number(self.poll_interval_s) and self.poll_interval_s > 0, \
            "must be a positive number of seconds"
        for name in ("index_wait_s", "retry_interval_s", "exit_after_s"):
            yield name, finite_number(getattr(self, name), 0.0), "must be seconds, 0 or more"
        for name in ("max_k", "max_batch_users", "max_score_items", "micro_batch"):
            yield name, whole_number(getattr(self, name), 1), "must be a whole number, at least 1"
        yield "max_body_bytes", whole_number(self.max_body_bytes, 1024), \
            "must be a whole number of bytes, at least 1024"
