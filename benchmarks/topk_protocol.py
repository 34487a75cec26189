"""One top-K protocol for every model of the peer benchmark.

Every model ranks the same candidate set (the items of the training rows) for the same users (a
seeded sample of users with a relevant held-out rating), excluding each user's known items (their
training rows, plus validation rows when testing, plus implicit interactions such as Book-Crossing's
rating-0 rows, which no model may recommend back). Metrics: Recall, NDCG and HitRate at k, catalogue
coverage at k (distinct recommended items over the candidate count) and the share of users whose list
holds the single most-recommended item.
"""

import dataclasses

import numpy as np
import pandas as pd

from tte_tfrs.evaluation import metrics


@dataclasses.dataclass
class TopKProtocol:
    """Who is ranked, over which items, what is relevant and what is excluded.

    Attributes:
      candidates: item ids that may be recommended (every model ranks exactly these).
      users: evaluated user ids.
      relevant: per user, the set of relevant held-out item ids.
      excluded: per user, int64 candidate positions that must not be recommended.
    """

    candidates: np.ndarray
    users: np.ndarray
    relevant: list
    excluded: list

    def position(self):
        return pd.Index(self.candidates)


def make_protocol(dataset, splits, held_out="test", threshold=None, max_users=2000, seed=0):
    """Builds the protocol for `splits` of `dataset` (held_out: ``test`` or ``validation``)."""
    if threshold is None:
        low, high = dataset.rating_scale
        threshold = float(round(high - 0.2 * (high - low)))
    rows = splits.test if held_out == "test" else splits.validation
    by_user = rows[rows["rating"] >= threshold].groupby("user_id")["item_id"].apply(set)
    users = np.asarray(sorted(by_user.index), dtype=object)
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    candidates = np.asarray(sorted(pd.unique(splits.train["item_id"])), dtype=object)
    known = [splits.train] + ([splits.validation] if held_out == "test" else [])
    if dataset.implicit_rating is not None:
        known.append(dataset.ratings[~dataset.explicit_mask()])
    known = pd.concat(known)[["user_id", "item_id"]]
    known = known[known["user_id"].isin(set(users))]
    index = pd.Index(candidates)
    known = known.assign(position=index.get_indexer(known["item_id"]))
    known = known[known["position"] >= 0]
    grouped = known.groupby("user_id")["position"].apply(lambda s: np.unique(s.to_numpy()))
    excluded = [grouped.get(u, np.zeros(0, np.int64)).astype(np.int64) for u in users]
    return TopKProtocol(candidates, users, [by_user[u] for u in users], excluded)


def top_k_from_scores(scores, excluded, k):
    """Best-first candidate positions of one user's score vector; ties go to the lower position."""
    scores = np.asarray(scores, np.float64).copy()
    scores[excluded] = -np.inf
    if len(scores) > k:
        # Every score above the k-th best, then the ones equal to it in position order.
        kth = -np.partition(-scores, k - 1)[k - 1]
        above, tied = np.flatnonzero(scores > kth), np.flatnonzero(scores == kth)
        part = np.concatenate([above, tied[:k - len(above)]])
    else:
        part = np.arange(len(scores))
    order = part[np.lexsort((part, -scores[part]))]
    return order[:k]


def rank_by_embeddings(user_vectors, item_vectors, protocol, k=10, block=256):
    """Top-k candidate positions per user from dot products of the given vectors."""
    out = []
    item_vectors = np.asarray(item_vectors, np.float32)
    for start in range(0, len(protocol.users), block):
        scores = np.asarray(user_vectors[start:start + block], np.float32) @ item_vectors.T
        for n, row in enumerate(scores):
            out.append(top_k_from_scores(row, protocol.excluded[start + n], k))
    return out


def rank_by_function(score, protocol, k=10):
    """Top-k candidate positions per user from `score(user_position) -> scores of candidates`."""
    return [top_k_from_scores(score(n), protocol.excluded[n], k)
            for n in range(len(protocol.users))]


def top_k_metrics(positions, protocol, k=10):
    """Recall, NDCG, HitRate at k, coverage at k and the top item's share of users' lists."""
    recommended = [list(protocol.candidates[p]) for p in positions]
    relevant = protocol.relevant
    counts = np.bincount(np.concatenate([np.asarray(p, np.int64) for p in positions]),
                         minlength=len(protocol.candidates)) if positions else np.zeros(1)
    return {f"recall@{k}": metrics.recall_at_k(recommended, relevant, k),
            f"ndcg@{k}": metrics.ndcg_at_k(recommended, relevant, k),
            f"hit_rate@{k}": metrics.hit_rate_at_k(recommended, relevant, k),
            f"coverage@{k}": metrics.coverage(recommended, len(protocol.candidates), k),
            "top_item_share": float(counts.max() / max(len(positions), 1)),
            "users_evaluated": len(positions)}
