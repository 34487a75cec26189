"""Evaluates an export on the split it was trained with: rating errors and top-K quality.

May import: tte_tfrs.data, tte_tfrs.training.config, tte_tfrs.exports (reader), tte_tfrs.serving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import ClassVar

import numpy as np
import pandas as pd

from tte_tfrs.data.dataset import Dataset
from tte_tfrs.data.loader import load_dataset
from tte_tfrs.data.split import Splits, split_ratings
from tte_tfrs.errors import ConfigError, DataError
from tte_tfrs.evaluation import metrics
from tte_tfrs.retrieval.registry import BACKENDS
from tte_tfrs.serving.recommender import Recommender
from tte_tfrs.training.config import DATASETS, Check, ConfigBase, TrainConfig, finite_number, whole_number


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationConfig(ConfigBase):
    """What to evaluate.

    Attributes:
      output_dir: the export root written by tte-train.
      data_dir: the data; None means the data the export was trained on (from its manifest).
      dataset: data layout (auto detects it from the file names).
      split: which held-out rows of the export's own split to score: test or validation.
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
    ks: tuple[int, ...] = (1, 5, 10, 20, 50, 100)
    relevance_threshold: float | None = None
    backend: str = "exact"
    max_users: int = 5000

    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "dataset": DATASETS, "split": ("test", "validation"), "backend": tuple(BACKENDS)}

    def _checks(self) -> Iterator[Check]:
        yield "dataset", self.dataset in DATASETS, f"must be one of {', '.join(DATASETS)}"
        yield "split", self.split in ("test", "validation"), "must be test or validation"
        yield "k", whole_number(self.k, 1), "must be a whole number >= 1"
        yield "ks", bool(self.ks) and all(whole_number(k, 1) for k in self.ks), \
            "must be whole numbers >= 1"
        yield "relevance_threshold", (self.relevance_threshold is None
                                      or finite_number(self.relevance_threshold)), \
            "must be a number"
        yield "backend", self.backend in BACKENDS, f"must be one of {', '.join(BACKENDS)}"
        yield "max_users", whole_number(self.max_users, 1), "must be a whole number >= 1"


def default_threshold(rating_scale: Sequence[float], threshold: float | None = None) -> float:
    """The relevance threshold: `threshold`, or round(highest - 0.2 (highest - lowest))."""
    if threshold is not None:
        return float(threshold)
    low, high = rating_scale
    return float(round(high - 0.2 * (high - low)))


def top_k_protocol(splits: Splits, held_out_split: str, threshold: float, max_users: int,
                   seed: int = 0) -> tuple[np.ndarray, list[set], dict[str, list]]:
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


def evaluate(config: EvaluationConfig) -> dict:
    """Scores the export's held-out ratings and its top-K lists.

    Returns:
      A dict: ``rmse``, ``mae``, ``baseline_rmse``, ``baseline_mae`` on the held-out ratings, the
      top-K metrics at ``k`` (see `tte_tfrs.evaluation.metrics.ranking_metrics`),
      ``recall_curve`` (recall at each of ``ks``) and the settings used.

    The split is re-created from the data and the export's config, and must hold exactly the rows
    the export recorded (`tte_tfrs.data.split.membership_hash` of each split, in the manifest):
    data that changed since (a rating appended, a file edited) would put rows the model trained
    on into the "held-out" set, so it is refused.

    Raises:
      ExportError: no usable export. DataError: the data cannot be read, or its split differs
      from the one the export was trained with.
    """
    recommender = Recommender.load(config.output_dir, backend=config.backend)
    where = recommender.reader.path("manifest.json")
    train_config = TrainConfig.from_manifest(recommender.manifest, where)
    if (train_config.refit or train_config.cross_fit) and config.split == "validation":
        how = "refitted on" if train_config.refit else "cross-fitted on"
        flag = "refit" if train_config.refit else "cross_fit"
        raise ConfigError(f"{where}: this model was {how} the training and validation rows "
                          f"({flag}), so its validation rows are not held out; evaluate the test "
                          "rows (--split=test)", field="split")
    data_dir = config.data_dir if config.data_dir is not None else train_config.data_dir
    dataset = load_dataset(data_dir, config.dataset if config.data_dir is not None
                           else train_config.dataset)
    splits = split_ratings(dataset, train_config.split, train_config.validation_fraction,
                           train_config.test_fraction, train_config.include_implicit,
                           train_config.seed)
    check_same_split(splits, recommender.manifest, dataset.source, where)
    held_out = splits.test if config.split == "test" else splits.validation
    users = np.asarray(sorted(held_out["user_id"].unique()), dtype=object)
    embeddings = _user_embeddings(recommender, users)
    user_rows = {u: n for n, u in enumerate(users)}
    result = rating_errors(recommender, held_out, embeddings, user_rows,
                           float(splits.train["rating"].mean()))
    result.update(top_k_quality(recommender, dataset, splits, config, embeddings, user_rows))
    result.update({"split": config.split, "backend": recommender.index.name,
                   "version": recommender.version, "k": config.k})
    return result


def check_same_split(splits: Splits, manifest: dict, source: str, where: str) -> None:
    """Refuses a re-created split that is not the one the export recorded.

    Raises:
      DataError: a split's rows differ, naming the data and the split.
    """
    recorded = manifest["dataset"].get("split_hashes")
    if not recorded:
        raise DataError(where, "records no split membership (a streamed run, or an export of an "
                        "older tte_tfrs), so "
                        "the held-out rows cannot be verified; re-export the model to evaluate it")
    now = splits.hashes()
    for name in ("train", "validation", "test"):
        if name in recorded and recorded[name] != now[name]:
            before = manifest["dataset"].get("splits", {}).get(name, "?")
            rows = len(getattr(splits, name))
            raise DataError(source, f"the {name} split re-created from this data ({rows:,} "
                            f"rows) is not the one version {manifest['version']} was trained with "
                            f"({before} rows): the data changed since (rows added, removed or "
                            "edited), so held-out rows could be rows the model trained on. "
                            "Evaluate with the data the export was trained on (--data_dir)")


def _user_embeddings(recommender: Recommender, users: Sequence[str]) -> np.ndarray:
    """Embeddings of `users`; users the export does not know are embedded from their id alone
    (the out-of-vocabulary row)."""
    requests = [recommender.user_features(u, None if recommender.has_user(u) else {"user_id": u})
                for u in users]
    dim = recommender.index.embeddings.shape[1]
    parts = [recommender.user_embeddings(requests[i:i + 1024])
             for i in range(0, len(requests), 1024)]
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


def rating_errors(recommender: Recommender, held_out: pd.DataFrame, embeddings: np.ndarray,
                  user_rows: dict[str, int], global_mean: float) -> dict:
    """RMSE and MAE of the held-out ratings, next to the global mean of the training ratings."""
    row_of = {item_id: row for row, item_id in enumerate(recommender.index.ids)}
    item_rows = held_out["item_id"].map(row_of).to_numpy().astype(np.int64)
    predicted = np.einsum("nd,nd->n", embeddings[held_out["user_id"].map(user_rows).to_numpy()],
                          recommender.index.embeddings[item_rows])
    truth = held_out["rating"].to_numpy()
    baseline = np.full(len(truth), global_mean)
    return {"rows": int(len(held_out)), "rmse": metrics.rmse(truth, predicted),
            "mae": metrics.mae(truth, predicted), "baseline_rmse": metrics.rmse(truth, baseline),
            "baseline_mae": metrics.mae(truth, baseline)}


def top_k_quality(recommender: Recommender, dataset: Dataset, splits: Splits,
                  config: EvaluationConfig, embeddings: np.ndarray,
                  user_rows: dict[str, int]) -> dict:
    """Ranking metrics of the whole catalogue for users with a relevant held-out rating,
    excluding what the model trained on (`top_k_protocol`)."""
    index = recommender.index
    row_of = {item_id: row for row, item_id in enumerate(index.ids)}
    threshold = default_threshold(dataset.rating_scale, config.relevance_threshold)
    chosen, relevant_sets, seen = top_k_protocol(splits, config.split, threshold, config.max_users)
    exclude = [np.asarray([row_of[i] for i in seen.get(u, [])], np.int64) for u in chosen]
    depth = int(min(max(max(config.ks), config.k), len(index.ids)))
    _, rows = index.search(embeddings[[user_rows[u] for u in chosen]], depth, exclude)
    recommended = [[index.ids[r] for r in user_rows_ if r >= 0] for user_rows_ in rows]
    result = metrics.ranking_metrics(recommended, relevant_sets, config.k, len(index.ids))
    result["recall_curve"] = {int(k): metrics.recall_at_k(recommended, relevant_sets, k)
                              for k in config.ks if k <= depth}
    result["relevance_threshold"] = threshold
    return result
