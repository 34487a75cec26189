"""Evaluates an export on the split it was trained with: rating errors and top-K quality."""

import dataclasses

import numpy as np
import pandas as pd

from tte_tfrs import metrics
from tte_tfrs.config import TrainConfig
from tte_tfrs.data.loader import load_dataset
from tte_tfrs.data.split import split_ratings
from tte_tfrs.recommender import Recommender, read_manifest


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """What to evaluate.

    Attributes:
      output_dir: the export root.
      data_dir: the data; None means the data the export was trained on (from its manifest).
      dataset: data layout (``auto`` to detect).
      split: which rows to score: ``test`` or ``validation`` of the export's own split.
      k: list length for the top-K metrics.
      ks: list lengths for the recall@K curve.
      relevance_threshold: a held-out rating at least this high marks a relevant item; None means
        round(highest - 0.2 (highest - lowest)): 8 on Book-Crossing's 0-10, 4 on MovieLens's 1-5.
      backend: retrieval backend for the top-K lists.
      max_users: evaluate the top-K metrics on at most this many users (seeded sample).
    """

    output_dir: str = "saved_models"
    data_dir: str | None = None
    dataset: str = "auto"
    split: str = "test"
    k: int = 10
    ks: tuple = (1, 5, 10, 20, 50, 100)
    relevance_threshold: float | None = None
    backend: str = "exact"
    max_users: int = 5000

    def __post_init__(self):
        if self.split not in ("test", "validation"):
            raise ValueError("split must be 'test' or 'validation'")
        if self.k < 1 or any(k < 1 for k in self.ks):
            raise ValueError("k and ks must be positive")


def _train_config(manifest):
    values = dict(manifest["config"])
    values["hidden_units"] = tuple(values.get("hidden_units", ()))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in fields})


def default_threshold(rating_scale, threshold=None):
    """The relevance threshold: `threshold`, or round(highest - 0.2 (highest - lowest))."""
    if threshold is not None:
        return float(threshold)
    low, high = rating_scale
    return float(round(high - 0.2 * (high - low)))


def top_k_protocol(splits, held_out_split, threshold, max_users, seed=0):
    """Who is evaluated, what is relevant to them and what must not be recommended to them.

    Args:
      splits: the `Splits` of the model under evaluation.
      held_out_split: ``test`` or ``validation``.
      threshold: held-out ratings at least this high are relevant.
      max_users: sample at most this many users (seeded).

    Returns:
      (users, relevant item-id sets, {user: item ids seen in training}) where "seen" covers the
      training split (plus validation when testing): what the model learned from.
    """
    held_out = splits.test if held_out_split == "test" else splits.validation
    by_user = held_out[held_out["rating"] >= threshold].groupby("user_id")["item_id"].apply(set)
    users = np.asarray(sorted(by_user.index), dtype=object)
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    known = [splits.train] + ([splits.validation] if held_out_split == "test" else [])
    seen = pd.concat(known)[["user_id", "item_id"]].groupby("user_id")["item_id"].apply(list)
    return users, [by_user[u] for u in users], seen.to_dict()


def evaluate(config):
    """Scores the export's held-out ratings and its top-K lists.

    Returns:
      A dict: ``rmse``, ``mae``, ``baseline_rmse``, ``baseline_mae`` on the held-out ratings, the
      top-K metrics at ``k`` (see `tte_tfrs.metrics.ranking_metrics`), ``recall_curve`` (recall at
      each of ``ks``) and the settings used.
    """
    manifest = read_manifest(config.output_dir)
    train_config = _train_config(manifest)
    data_dir = config.data_dir if config.data_dir is not None else train_config.data_dir
    dataset = load_dataset(data_dir, config.dataset if config.data_dir else train_config.dataset)
    splits = split_ratings(dataset, train_config.split, train_config.validation_fraction,
                           train_config.test_fraction, train_config.include_implicit,
                           train_config.seed)
    held_out = splits.test if config.split == "test" else splits.validation
    recommender = Recommender.load(config.output_dir, backend=config.backend)
    index = recommender.index
    row_of = {item_id: row for row, item_id in enumerate(index.ids)}

    users = np.asarray(sorted(held_out["user_id"].unique()), dtype=object)
    user_rows = {u: n for n, u in enumerate(users)}
    # Users the export does not know are embedded from their id alone (the out-of-vocabulary row).
    requests = [recommender.user_features(u, None if recommender.has_user(u) else {"user_id": u})
                for u in users]
    embeddings = np.concatenate([recommender.user_embeddings(requests[i:i + 1024])
                                 for i in range(0, len(requests), 1024)])
    item_rows = held_out["item_id"].map(row_of).to_numpy()
    predicted = np.einsum("nd,nd->n", embeddings[held_out["user_id"].map(user_rows).to_numpy()],
                          index.embeddings[item_rows.astype(np.int64)])
    truth = held_out["rating"].to_numpy()
    global_mean = float(splits.train["rating"].mean())
    result = {"rows": int(len(held_out)), "rmse": metrics.rmse(truth, predicted),
              "mae": metrics.mae(truth, predicted),
              "baseline_rmse": metrics.rmse(truth, np.full(len(truth), global_mean)),
              "baseline_mae": metrics.mae(truth, np.full(len(truth), global_mean))}

    threshold = default_threshold(dataset.rating_scale, config.relevance_threshold)
    chosen, relevant_sets, seen = top_k_protocol(splits, config.split, threshold, config.max_users)
    exclude = [np.asarray([row_of[i] for i in seen.get(u, [])], np.int64) for u in chosen]
    depth = int(min(max(max(config.ks), config.k), len(index.ids)))
    _, rows = index.search(embeddings[[user_rows[u] for u in chosen]], depth, exclude)
    recommended = [[index.ids[r] for r in user_rows_ if r >= 0] for user_rows_ in rows]
    result.update(metrics.ranking_metrics(recommended, relevant_sets, config.k, len(index.ids)))
    result["recall_curve"] = {int(k): metrics.recall_at_k(recommended, relevant_sets, k)
                              for k in config.ks if k <= depth}
    result.update({"relevance_threshold": threshold, "split": config.split,
                   "backend": index.name, "version": manifest["version"], "k": config.k})
    return result
