"""Following an export folder's current version while serving it, the way TF Serving follows its
model base path.

A `VersionManager` holds one loaded `Recommender` and a watcher thread that reads the folder's
``manifest.json`` (through the export reader) every poll interval. When it names another version
(a new export, or a rollback to an older one) the watcher loads that version in the background,
warms it with a few requests, and then swaps it in with one reference assignment. A request takes
the current recommender once, when it starts, and finishes on it, so requests in flight during a
swap are answered by the version they started with. A version that fails to load is logged, counted
and reported (`state`), and the version before it keeps serving; it is tried again after the
retry interval, or at once when the manifest names another version.

The folder is only ever read through `ExportReader`; nothing here takes a path from a request.

May import: tte_tfrs.exports.reader, tte_tfrs.serving (recommender, config, metrics).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from tte_tfrs.exports.reader import ExportReader, read_manifest
from tte_tfrs.serving.config import ServeConfig
from tte_tfrs.serving.metrics import ServiceMetrics
from tte_tfrs.serving.recommender import Recommender

log = logging.getLogger("tte_tfrs.serve")

Loader = Callable[..., Recommender]
WARM_USERS = 8


def warm(recommender: Recommender) -> None:
    """Runs the request paths once (known users alone and in a batch, a new user, a score), so
    the first real requests pay no tracing or first-call cost."""
    users = [str(u) for u in recommender.users_with_ratings[:WARM_USERS]]
    queries = [recommender.prepare(u) for u in users if recommender.has_user(u)]
    k = min(10, recommender.catalogue_size)
    if queries:
        recommender.recommend_queries(queries[:1], k)
        recommender.recommend_queries(queries, k)
    features = {name: "" for name, spec in recommender.reader.user_inputs().items()
                if spec["dtype"] == "string" and name != "user_id"}
    if features:
        recommender.recommend_queries([recommender.prepare(features=features)], k)
    if queries and recommender.catalogue_size:
        recommender.score(queries[0].user_id, item_ids=[str(recommender.index.ids[0])])


class VersionManager:
    """The recommender serving now, and the watcher that replaces it when the export changes.

    Args:
      config: the service's settings (folder, backend, poll and retry intervals).
      metrics: where loads and failures are counted.
      loader: builds a `Recommender` for (output_dir, backend=..., version=...,
        build_if_missing=...); `Recommender.load` unless a test replaces it.
    """

    def __init__(self, config: ServeConfig, metrics: ServiceMetrics | None = None,
                 loader: Loader | None = None):
        self.config = config
        self.metrics = metrics or ServiceMetrics()
        self._loader = loader or Recommender.load
        self._current: Recommender | None = None
        self._lock = threading.Lock()            # guards the fields below (not `current`)
        self._loaded_at: float | None = None
        self._loading: int | None = None
        self._waiting: dict[int, float] = {}     # version -> when it was first seen without index
        self._failures: dict[int | None, tuple[float, str]] = {}   # version -> (when, message)
        self._last_failure: dict[str, Any] | None = None
        self._history: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> Recommender | None:
        """The recommender serving now (None before the first version is loaded). Take it once per
        request and use that object for the whole request."""
        return self._current

    def load_current(self) -> Recommender:
        """Loads and swaps in the folder's current version now, building a missing index in
        memory (the first load of a service).

        Raises:
          ExportError, IndexMismatchError, ConfigError: the version cannot be served.
        """
        version = read_manifest(self.config.output_dir)["version"]
        return self._load(version, build_if_missing=True)

    def start(self) -> None:
        """Starts the watcher thread (a daemon; `stop` ends it)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="tte-serve-watcher",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def state(self) -> dict[str, Any]:
        """What the service serves and what it is doing about the folder, for /readyz and
        /v1/model: ``version``, ``loaded_at``, ``loading``, ``waiting_for_index``,
        ``last_failure`` ({version, error, at}) and ``history`` (the last loads)."""
        current = self._current
        with self._lock:
            return {"version": current.version if current else None,
                    "loaded_at": self._loaded_at,
                    "loading": self._loading,
                    "waiting_for_index": min(self._waiting) if self._waiting else None,
                    "last_failure": dict(self._last_failure) if self._last_failure else None,
                    "history": list(self._history)}

    def poll(self) -> None:
        """One look at the folder: loads and swaps in its current version when it differs from
        the one serving. Never raises; failures are recorded."""
        try:
            target = read_manifest(self.config.output_dir)["version"]
        except Exception as exc:                              # noqa: BLE001  (reported, not raised)
            self._record_failure(None, f"cannot read the current version: {exc}")
            return
        current = self._current
        if current is not None and current.version == target:
            with self._lock:
                self._waiting.clear()
            return
        failed = self._failures.get(target)
        if failed and time.monotonic() - failed[0] < self.config.retry_interval_s:
            return
        try:
            has_index = self._has_saved_index(target)
        except Exception as exc:                              # noqa: BLE001
            self._record_failure(target, str(exc))
            return
        if not has_index:
            with self._lock:                      # only the version the manifest names waits
                first_seen = self._waiting.get(target, time.monotonic())
                self._waiting = {target: first_seen}
            if time.monotonic() - first_seen < self.config.index_wait_s:
                return
        try:
            self._load(target, build_if_missing=True)
        except Exception:                                     # noqa: BLE001  (recorded in _load)
            return

    def _has_saved_index(self, version: int) -> bool:
        if self.config.backend == "exact":
            return True
        folder = ExportReader(self.config.output_dir, version).index_folder(self.config.backend)
        return os.path.exists(folder)

    def _load(self, version: int, build_if_missing: bool) -> Recommender:
        started = time.monotonic()
        with self._lock:
            self._loading = version
        log.info("loading version %d of %s (%s)", version, self.config.output_dir,
                 self.config.backend)
        try:
            recommender = self._loader(self.config.output_dir, backend=self.config.backend,
                                       version=version, build_if_missing=build_if_missing)
            warm(recommender)
        except Exception as exc:
            self._record_failure(version, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            with self._lock:
                self._loading = None
        previous = self._current
        self._current = recommender                          # the swap: one reference assignment
        # Collect the replaced version's cycles once, here in the loader thread, then freeze what
        # is loaded: the collector never walks the model's objects again while serving, so no
        # long full collection pauses a request.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        seconds = time.monotonic() - started
        with self._lock:
            self._loaded_at = time.time()
            self._waiting = {}
            self._failures.pop(version, None)
            self._history = (self._history + [{"version": version, "loaded_at": self._loaded_at,
                                               "seconds": round(seconds, 3)}])[-10:]
        self.metrics.loaded(version, seconds)
        for note in recommender.index.notes:
            log.warning("version %d: %s", version, note)
        log.warning("serving version %d (was %s), loaded and warmed in %.1f s", version,
                    previous.version if previous else "none", seconds)
        return recommender

    def _record_failure(self, version: int | None, message: str) -> None:
        now = time.monotonic()
        serving = self._current.version if self._current else None
        with self._lock:
            repeated = version in self._failures and self._failures[version][1] == message
            self._failures[version] = (now, message)
            self._last_failure = {"version": version, "error": message, "at": time.time()}
        if version is not None or not repeated:      # an unreadable manifest counts once
            self.metrics.failed(version)
        if not repeated:
            log.error("version %s cannot be served: %s; %s", version, message,
                      f"still serving version {serving}" if serving else "nothing is serving")

    def _watch(self) -> None:
        while not self._stop.wait(self.config.poll_interval_s):
            self.poll()
