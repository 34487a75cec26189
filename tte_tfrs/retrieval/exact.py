"""Exact maximum inner product search: the ground truth for every other backend."""

import numpy as np

from tte_tfrs.retrieval.base import Backend, top_k_rows

QUERY_BLOCK = 8          # measured fastest on 339,898 x 18 (the per-query top-k dominates)


class ExactBackend(Backend):
    """Brute force: every item is scored with a matrix product (numpy, BLAS threads)."""

    name = "exact"

    @classmethod
    def default_params(cls, count, dim):
        return {}, {}

    def _build(self, embeddings):
        self.embeddings = embeddings

    def search(self, queries, k):
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self.embeddings))
        scores = np.empty((len(queries), k), np.float32)
        rows = np.empty((len(queries), k), np.int64)
        for start in range(0, len(queries), QUERY_BLOCK):
            block = queries[start:start + QUERY_BLOCK] @ self.embeddings.T
            top = top_k_rows(block, k)
            rows[start:start + len(block)] = top
            scores[start:start + len(block)] = np.take_along_axis(block, top, axis=1)
        return scores, rows

    def _save(self, folder):
        pass

    def _load(self, folder, embeddings):
        self.embeddings = embeddings
