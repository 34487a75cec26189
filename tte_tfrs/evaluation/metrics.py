"""Evaluation metrics for ratings and top-K lists (plain numpy, no TensorFlow).

Conventions: ranked lists are best first; relevance is binary (an item is relevant when it is in the
user's held-out relevant set, e.g. held-out ratings >= a threshold). Per-user ranking metrics are
averaged over users that have at least one relevant item; users without any are skipped (they cannot
be recalled), which `ranking_metrics` reports as ``users_evaluated``.
"""

import numpy as np


def rmse(truth, predicted):
    """Root mean squared error."""
    error = np.asarray(truth, np.float64) - np.asarray(predicted, np.float64)
    return float(np.sqrt(np.mean(error ** 2))) if error.size else float("nan")


def mae(truth, predicted):
    """Mean absolute error."""
    error = np.asarray(truth, np.float64) - np.asarray(predicted, np.float64)
    return float(np.mean(np.abs(error))) if error.size else float("nan")


def _per_user(recommended, relevant, k, score):
    values = [score(list(items)[:k], set(rel)) for items, rel in zip(recommended, relevant) if rel]
    return float(np.mean(values)) if values else float("nan")


def recall_at_k(recommended, relevant, k):
    """Share of each user's relevant items found in the top k, averaged over users."""
    return _per_user(recommended, relevant, k,
                     lambda top, rel: len(rel.intersection(top)) / len(rel))


def precision_at_k(recommended, relevant, k):
    """Share of the top k that is relevant (divided by k even when fewer were returned)."""
    return _per_user(recommended, relevant, k, lambda top, rel: len(rel.intersection(top)) / k)


def hit_rate_at_k(recommended, relevant, k):
    """Share of users with at least one relevant item in the top k."""
    return _per_user(recommended, relevant, k, lambda top, rel: float(bool(rel.intersection(top))))


def ndcg_at_k(recommended, relevant, k):
    """Normalised discounted cumulative gain with binary gains and log2(rank + 1) discounts."""
    def score(top, rel):
        gains = np.array([item in rel for item in top], np.float64)
        dcg = float(np.sum(gains / np.log2(np.arange(2, len(gains) + 2))))
        ideal = float(np.sum(1.0 / np.log2(np.arange(2, min(len(rel), k) + 2))))
        return dcg / ideal
    return _per_user(recommended, relevant, k, score)


def mrr(recommended, relevant, k=None):
    """Mean reciprocal rank of the first relevant item (0 when none is in the top k)."""
    def score(top, rel):
        for rank, item in enumerate(top, start=1):
            if item in rel:
                return 1.0 / rank
        return 0.0
    return _per_user(recommended, relevant, k if k is not None else None, score)


def coverage(recommended, catalogue_size, k=None):
    """Share of the catalogue that appears in at least one user's top k."""
    shown = {item for items in recommended for item in list(items)[:k]}
    return len(shown) / catalogue_size if catalogue_size else float("nan")


def ranking_metrics(recommended, relevant, k, catalogue_size):
    """Recall, precision, NDCG, hit rate, MRR at k and coverage, as a dict."""
    relevant = [set(r) for r in relevant]
    return {f"recall@{k}": recall_at_k(recommended, relevant, k),
            f"precision@{k}": precision_at_k(recommended, relevant, k),
            f"ndcg@{k}": ndcg_at_k(recommended, relevant, k),
            f"hit_rate@{k}": hit_rate_at_k(recommended, relevant, k),
            f"mrr@{k}": mrr(recommended, relevant, k),
            f"coverage@{k}": coverage(recommended, catalogue_size, k),
            "users_evaluated": sum(1 for r in relevant if r)}
