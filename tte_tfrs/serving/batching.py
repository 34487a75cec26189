"""Micro-batching: single-user recommendation requests that arrive together are answered by one
`Recommender.recommend_queries` call (one user tower call, one batched index search).

One worker thread takes whatever requests are waiting (up to ``max_batch``), answers them grouped
by recommender (version), k and exclude_rated, and hands each answer back to the event loop of its
request. There is no timer: a request that finds the worker idle is answered at once, and requests
that arrive while it works wait for the next batch, so batches grow with the load by themselves.
Answers are those `recommend` gives for each user alone.

May import: tte_tfrs.serving.recommender.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

from tte_tfrs.serving.recommender import Recommendation, Recommender, UserQuery

_STOP = object()


class MicroBatcher:
    """Answers single-user recommendation requests in batches, on one worker thread.

    Args:
      max_batch: the most users in one `recommend_queries` call.
      on_batch: called with the size of every batch run (for metrics).
    """

    def __init__(self, max_batch: int = 64, on_batch: Callable[[int], Any] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="tte-serve-batcher", daemon=True)
        self._thread.start()

    async def recommend(self, recommender: Recommender, query: UserQuery, k: int,
                        exclude_rated: bool) -> list[Recommendation]:
        """The top k for one prepared user, answered by `recommender` (the version the request
        started with), in a batch with whatever else is waiting.

        Raises:
          Whatever `recommend_queries` raises for the batch.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((recommender, query, k, exclude_rated, loop, future))
        return await future

    def close(self, timeout: float | None = 10.0) -> None:
        """Answers what is queued, then ends the worker."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = [first], False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[tuple]) -> None:
        groups: dict[tuple, list[tuple]] = {}
        for item in batch:
            recommender, _, k, exclude_rated, _, _ = item
            groups.setdefault((id(recommender), k, exclude_rated), []).append(item)
        for items in groups.values():
            recommender, _, k, exclude_rated, _, _ = items[0]
            try:
                answers = recommender.recommend_queries([item[1] for item in items], k,
                                                        exclude_rated)
            except Exception as exc:                          # noqa: BLE001  (each caller gets it)
                _settle_all(items, [None] * len(items), exc)
                continue
            if self._on_batch is not None:
                self._on_batch(len(items))
            _settle_all(items, answers, None)


def _settle_all(items: list[tuple], answers: list[Any], error: BaseException | None) -> None:
    """Hands the answers to their requests' event loops: one wake-up per loop, not per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
    for (*_, loop, future), answer in zip(items, answers):
        by_loop.setdefault(loop, []).append((future, answer))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled, error)
        except RuntimeError:                                  # that loop has closed: nobody waits
            pass


def _settle(settled: list[tuple[asyncio.Future, Any]], error: BaseException | None) -> None:
    for future, answer in settled:
        if future.done():                                     # the client went away
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(answer)
