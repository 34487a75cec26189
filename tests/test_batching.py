"""Micro-batching: a user's answer does not depend on the requests it is batched with, and every
request is answered by the recommender (version) it was submitted with."""

import asyncio
import threading

import numpy as np

from tte_tfrs.retrieval import ItemIndex
from tte_tfrs.serving.batching import MicroBatcher


def test_each_query_gets_the_answer_it_gets_alone_in_any_batch():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(2000, 7)).astype(np.float32)
    ids = np.asarray([f"i{n:05d}" for n in range(len(items))], dtype=object)
    # A coarse IVF-PQ probing one cell: its candidates depend on how many are asked for.
    index = ItemIndex.build(items, ids, "faiss-ivfpq", {"nlist": 4, "m": 2, "nbits": 4},
                            {"nprobe": 1})
    assert index.name == "faiss-ivfpq"
    queries = rng.normal(size=(8, 7)).astype(np.float32)
    excluded = [np.zeros(0, np.int64)] * 4 + [rng.choice(len(items), 1500, replace=False)
                                              for _ in range(4)]
    together_scores, together_rows = index.search(queries, 10, excluded)
    for q in range(len(queries)):
        scores, rows = index.search(queries[q:q + 1], 10, [excluded[q]])
        np.testing.assert_array_equal(rows[0], together_rows[q])
        np.testing.assert_array_equal(scores[0], together_scores[q])


class Version:
    """A stand-in recommender: answers say which version, k and user produced them."""

    def __init__(self, version, release):
        self.version, self.release, self.calls = version, release, []
        self.entered = threading.Event()

    def recommend_queries(self, queries, k, exclude_rated):
        self.entered.set()
        self.release.wait(5)                     # hold the first batch until all are queued
        self.calls.append(len(queries))
        return [(self.version, k, exclude_rated, query) for query in queries]


def test_requests_are_batched_and_answered_by_the_version_they_started_with():
    release = threading.Event()
    old, new = Version(1, release), Version(2, release)
    batcher = MicroBatcher(max_batch=64)

    async def ask():
        first = asyncio.ensure_future(batcher.recommend(old, "u0", 5, True))
        while not old.entered.is_set():           # the worker holds u0 alone in its first batch
            await asyncio.sleep(0.001)
        rest = [batcher.recommend(version, f"u{n}", k, exclude)
                for n, (version, k, exclude) in enumerate(
                    [(old, 5, True), (new, 5, True), (old, 3, True), (new, 5, True),
                     (old, 5, False), (old, 5, True)], start=1)]
        pending = asyncio.gather(first, *rest)
        for _ in range(3):                        # each request runs up to its queue.put
            await asyncio.sleep(0)
        release.set()
        return await pending

    try:
        answers = asyncio.run(ask())
    finally:
        batcher.close()
    assert [a[3] for a in answers] == [f"u{n}" for n in range(7)]
    assert [a[:3] for a in answers] == [(1, 5, True), (1, 5, True), (2, 5, True), (1, 3, True),
                                        (2, 5, True), (1, 5, False), (1, 5, True)]
    assert old.calls == [1, 2, 1, 1] and new.calls == [2]     # u1 and u6 shared one call
