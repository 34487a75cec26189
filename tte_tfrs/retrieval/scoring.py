"""The one exact scoring function and the one ranking rule every retrieval path uses (SRS R5).

A matrix product, an einsum and a matrix-vector product of the same float32 vectors can differ in
the last bit (BLAS picks its kernel and summation order by shape), so a ranking built on them can
order near-ties differently with the batch size or the backend. Every exact score the package
returns therefore comes from `exact_scores`: the float32 inputs are widened to float64 (where
their products are exact), each dot product is summed along its own contiguous row by the same
numpy reduction whatever the number of queries or candidates, and the sum is rounded once to
float32. Same embeddings, same bits, whichever backend found the candidates.

Backends may compute their own (faster, approximate) scores to find candidates; only these scores
rank results. Ties go to the lower row, and rows are ordered by item id, so to the lower item id.
"""

from __future__ import annotations

import numpy as np

# Rows of (queries x candidates) scored per step; bounds the float64 scratch memory (~64 MB at 18 dims).
_SCORE_BLOCK = 1 << 19


def exact_scores(queries: np.ndarray, embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact inner products of each query with its candidate rows, bit-identical on every path.

    Args:
      queries: float32 [queries, dim].
      embeddings: float32 [items, dim].
      rows: int [queries, candidates] rows of `embeddings`; -1 marks "no candidate".

    Returns:
      float32 [queries, candidates]; -inf where the row is -1.
    """
    queries = np.asarray(queries, dtype=np.float32)
    rows = np.asarray(rows, dtype=np.int64)
    scores = np.empty(rows.shape, np.float32)
    if rows.size == 0:
        return scores
    wide_queries = queries.astype(np.float64)
    per_step = max(1, _SCORE_BLOCK // max(rows.shape[1], 1))
    for start in range(0, len(rows), per_step):
        block = rows[start:start + per_step]
        gathered = embeddings[np.where(block < 0, 0, block)].astype(np.float64)
        gathered *= wide_queries[start:start + per_step, None, :]
        scores[start:start + per_step] = gathered.sum(axis=-1)
    scores[rows < 0] = -np.inf
    return scores


def rank(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best `k` (score, row) pairs per query: higher score first, ties to the lower row.

    Args:
      scores: float32 [queries, candidates], -inf for "no candidate" or an excluded item.
      rows: int64 [queries, candidates]; a row may appear once per query at most.
      k: results per query.

    Returns:
      (scores float32 [queries, k], rows int64 [queries, k]); -1 rows (score -inf) pad queries
      with fewer than k candidates.
    """
    scores = np.asarray(scores, np.float32)
    rows = np.asarray(rows, np.int64)
    if rows.shape[1] < k:
        pad = k - rows.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
    missing = rows < 0
    tie_key = np.where(missing, np.iinfo(np.int64).max, rows) if missing.any() else rows
    order = np.lexsort((tie_key, -scores), axis=1)[:, :k]
    best_rows = np.take_along_axis(rows, order, axis=1)
    best_scores = np.take_along_axis(scores, order, axis=1)
    best_rows[np.isneginf(best_scores)] = -1
    return best_scores, best_rows


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the `k` highest scores of a dense [queries, items] matrix, best first, ties to the
    lower row."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        # Rows tied with the k-th score may be cut arbitrarily by argpartition: take them all.
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
        rows = [np.flatnonzero(s >= t) for s, t in zip(scores, kth[:, 0])]
    else:
        rows = [np.arange(scores.shape[1]) for _ in range(scores.shape[0])]
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for q, candidates in enumerate(rows):
        order = np.lexsort((candidates, -scores[q, candidates]))
        out[q] = candidates[order[:k]]
    return out


def tie_aware_recall(returned_scores: np.ndarray, truth_scores: np.ndarray) -> np.ndarray:
    """Per query, the share of the true top k that the returned top k matches.

    Both are exact scores from `exact_scores`, best first, k columns. A returned item counts when
    its exact score reaches the k-th best exact score: with tied items any of them is a right
    answer. Scores are bit-identical on every path, so no tolerance is needed.
    """
    k = truth_scores.shape[1]
    kth = truth_scores[:, -1:]
    hits = np.minimum((returned_scores >= kth).sum(axis=1), k)
    return hits / k
