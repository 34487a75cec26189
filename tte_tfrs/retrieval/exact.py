"""Fast exact maximum inner product search: the ground truth and the baseline of every speed ratio.

One pass of FAISS's brute-force k-nearest-neighbour kernel over the embedding matrix (SIMD dot
products and a heap for single queries, a BLAS matrix product for batches; no copy of the matrix).
Its float32 scores can differ from the package's one exact score (`scoring.exact_scores`) in the last
bits, so it returns every item within that rounding of the k-th best score (all tied items
included); `ItemIndex` re-scores them exactly, so exact results never depend on the batch size.
"""

from __future__ import annotations

import numpy as np

from tte_tfrs.retrieval.base import Backend

try:
    import faiss
except ImportError:  # pragma: no cover - faiss-cpu is a hard dependency
    faiss = None

# Items fetched beyond k, so that the rounding window around the k-th score is usually complete.
WINDOW_EXTRA = 16
UNIT_ROUNDOFF = 2.0 ** -24


class ExactBackend(Backend):
    """Brute force: every item is scored (FAISS ``knn``, inner product)."""

    name = "exact"

    @classmethod
    def default_params(cls, count, dim):
        return {}, {}

    def _build(self, embeddings):
        self._set(embeddings)

    def _set(self, embeddings):
        self.embeddings = embeddings
        norms = np.sqrt(np.einsum("ij,ij->i", embeddings, embeddings, dtype=np.float64))
        self._max_norm = float(norms.max()) if len(norms) else 0.0

    def rounding_bound(self, queries):
        """Per query, a bound on |float32 score from any BLAS/SIMD path - `exact_scores`|."""
        dim = self.embeddings.shape[1]
        query_norms = np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64))
        # Each path's error is at most about dim * u * |q| * |x| (Higham, dot products); doubled.
        return 2.0 * (dim + 2) * UNIT_ROUNDOFF * query_norms * self._max_norm

    def search(self, queries, k):
        """Scores and rows of the best `k` items per query plus every item that may tie with the
        k-th within rounding (so more than k columns, -1 padded, when there are ties)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        count = len(self.embeddings)
        k = int(min(k, count))
        if k == 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        fetched = min(count, k + WINDOW_EXTRA)
        scores, rows = faiss.knn(queries, self.embeddings, fetched, metric=faiss.METRIC_INNER_PRODUCT)
        # Everything within twice the rounding bound of the k-th score may be a top-k item.
        threshold = scores[:, k - 1] - 2.0 * self.rounding_bound(queries)
        open_window = np.flatnonzero(scores[:, -1] >= threshold) if fetched < count else []
        if len(open_window) == 0:
            return scores, rows.astype(np.int64)
        # Many items tie with the k-th: collect the whole window for those queries.
        windows = {}
        for q in open_window:
            full = self.embeddings @ queries[q]
            inside = np.flatnonzero(full >= threshold[q])
            windows[q] = (full[inside], inside)
        width = max(fetched, max(len(r) for _, r in windows.values()))
        out_scores = np.full((len(queries), width), -np.inf, np.float32)
        out_rows = np.full((len(queries), width), -1, np.int64)
        out_scores[:, :fetched], out_rows[:, :fetched] = scores, rows
        for q, (window_scores, window_rows) in windows.items():
            out_scores[q] = -np.inf
            out_rows[q] = -1
            out_scores[q, :len(window_rows)] = window_scores
            out_rows[q, :len(window_rows)] = window_rows
        return out_scores, out_rows

    def _save(self, folder):
        pass

    def _load(self, folder, embeddings):
        self._set(embeddings)
