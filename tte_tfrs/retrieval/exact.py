"""Fast exact maximum inner product search: the ground truth and the baseline of every speed ratio.

Per query: one BLAS matrix-vector product over the embedding matrix (a matrix product for a block of
queries), then a cheap selection instead of a full partition: the k-th best score of every 16th item
is a lower bound of the k-th best score overall, so the items scoring at least that (about 16 k of
them) hold the top k. BLAS float32 scores can differ from the package's one exact score
(`scoring.exact_scores`) in the last bits, so the bound is lowered by twice the rounding error and
every item within it is returned (tied items included); `ItemIndex` re-scores them exactly. Exact
results therefore never depend on the batch size or the BLAS kernel.
"""

from __future__ import annotations

import numpy as np

from tte_tfrs.retrieval.base import Backend

UNIT_ROUNDOFF = 2.0 ** -24
SAMPLE_STRIDE = 16             # every 16th item estimates the k-th best score
BLOCK_SCORES = 1 << 24         # scores held at once per block of queries (64 MB)


class ExactBackend(Backend):
    """Brute force: every item is scored by one BLAS product (numpy)."""

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
        """Per query, a bound on |a float32 BLAS score - `exact_scores`|."""
        dim = self.embeddings.shape[1]
        query_norms = np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64))
        # Each path's error is at most about dim * u * |q| * |x| (Higham, dot products); doubled.
        return 2.0 * (dim + 2) * UNIT_ROUNDOFF * query_norms * self._max_norm

    def search(self, queries, k):
        """Scores and rows of the best `k` items per query and of every item that may tie with the
        k-th within rounding: at least k columns, best first, -1 padded."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        count = len(self.embeddings)
        k = int(min(k, count))
        if k == 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        slack = 2.0 * self.rounding_bound(queries)
        found = []
        per_block = max(1, BLOCK_SCORES // count)
        for start in range(0, len(queries), per_block):
            block = queries[start:start + per_block]
            scores = block @ self.embeddings.T if len(block) > 1 else (self.embeddings @ block[0])[None]
            for offset, row_scores in enumerate(scores):
                bound = _kth_lower_bound(row_scores, k) - slack[start + offset]
                rows = np.flatnonzero(row_scores >= bound)
                order = np.argsort(-row_scores[rows], kind="stable")        # best first
                found.append((row_scores[rows[order]], rows[order]))
        width = max(len(rows) for _, rows in found)
        out_scores = np.full((len(queries), width), -np.inf, np.float32)
        out_rows = np.full((len(queries), width), -1, np.int64)
        for q, (scores, rows) in enumerate(found):
            out_scores[q, :len(rows)] = scores
            out_rows[q, :len(rows)] = rows
        return out_scores, out_rows

    def _save(self, folder):
        pass

    def _load(self, folder, embeddings):
        self._set(embeddings)


def _kth_lower_bound(scores: np.ndarray, k: int) -> float:
    """A value at most the k-th largest of `scores`: the k-th largest of every 16th score."""
    sample = scores[::SAMPLE_STRIDE] if len(scores) >= SAMPLE_STRIDE * k * 4 else scores
    if len(sample) <= k:
        return float(sample.min())
    return float(np.partition(sample, len(sample) - k)[len(sample) - k])
