"""The peer benchmark's fairness rules (benchmarks/topk_protocol.py, benchmarks/inner_split.py): every
model ranks the same candidates without the user's known items, and --held_out=inner never reads
the real test rows."""

import dataclasses
import os
import sys

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import inner_split  # noqa: E402
import topk_protocol  # noqa: E402

from tte_tfrs.data.loader import load_dataset  # noqa: E402
from tte_tfrs.data.split import split_ratings  # noqa: E402
from tte_tfrs.training.config import TrainConfig  # noqa: E402


@pytest.fixture(scope="module")
def dataset_and_splits(tiny_data):
    dataset = load_dataset(tiny_data[0])
    base = TrainConfig(data_dir=tiny_data[0])
    splits = split_ratings(dataset, "random", base.validation_fraction, base.test_fraction,
                           False, base.seed)
    return dataset, splits


def _pairs(frame):
    return set(zip(frame["user_id"].astype(str), frame["item_id"].astype(str)))


def test_the_protocol_ranks_training_items_and_excludes_every_known_item(dataset_and_splits):
    dataset, splits = dataset_and_splits
    protocol = topk_protocol.make_protocol(dataset, splits, "test", max_users=10 ** 6)
    assert set(protocol.candidates) == set(splits.train["item_id"])
    assert dataset.rating_scale == (0, 10)
    liked = splits.test[splits.test["rating"] >= 8]          # the top fifth of 0-10
    assert set(protocol.users) == set(liked["user_id"])
    implicit = dataset.ratings[~dataset.explicit_mask()]
    assert len(implicit), "the tiny data set has implicit interactions"
    known = _pairs(splits.train) | _pairs(splits.validation) | _pairs(implicit)
    candidates = set(protocol.candidates)
    for user, relevant, excluded in zip(protocol.users, protocol.relevant, protocol.excluded):
        assert relevant == set(liked.loc[liked["user_id"] == user, "item_id"])
        expected = {item for u, item in known if u == str(user) and item in candidates}
        assert set(protocol.candidates[excluded]) == expected


def test_validation_protocol_leaves_validation_items_rankable(dataset_and_splits):
    dataset, splits = dataset_and_splits
    protocol = topk_protocol.make_protocol(dataset, splits, "validation", max_users=10 ** 6)
    validation = _pairs(splits.validation)
    for user, excluded in zip(protocol.users, protocol.excluded):
        assert not {(str(user), item) for item in protocol.candidates[excluded]} & validation


def test_a_ranking_never_holds_an_excluded_item_and_ties_go_to_the_lower_position():
    scores = np.array([1.0, 5.0, 5.0, 3.0, 9.0, 5.0])
    np.testing.assert_array_equal(topk_protocol.top_k_from_scores(scores, [4], 3), [1, 2, 5])
    np.testing.assert_array_equal(topk_protocol.top_k_from_scores(scores, [1, 4], 2), [2, 5])
    # A tie across the cut-off (integer counts, as the popularity ranker's) goes the same way.
    ties = np.array([0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0], float)
    np.testing.assert_array_equal(topk_protocol.top_k_from_scores(ties, [], 2), [1, 4])
    np.testing.assert_array_equal(topk_protocol.top_k_from_scores(ties, [4], 3), [1, 5, 6])
    np.testing.assert_array_equal(topk_protocol.top_k_from_scores(-ties, [], 4), [0, 2, 3, 12])


def test_top_k_metrics_by_hand():
    protocol = topk_protocol.TopKProtocol(candidates=np.array(["a", "b", "c", "d"], object),
                                          users=np.array(["u", "v"], object),
                                          relevant=[{"a"}, {"d", "c"}], excluded=[[], []])
    measured = topk_protocol.top_k_metrics([np.array([0, 1]), np.array([1, 2])], protocol, k=2)
    assert measured["recall@2"] == pytest.approx((1.0 + 0.5) / 2)
    assert measured["hit_rate@2"] == pytest.approx(1.0)
    assert measured["coverage@2"] == pytest.approx(3 / 4)
    assert measured["top_item_share"] == pytest.approx(1.0)           # "b" in both lists
    # NDCG: u's hit at rank 1 (ideal 1); v's at rank 2 of an ideal two-hit list.
    v = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert measured["ndcg@2"] == pytest.approx((1.0 + v) / 2)


def test_inner_rows_never_hold_a_test_row(dataset_and_splits):
    dataset, splits = dataset_and_splits
    inner = inner_split.inner_dataset(dataset, "random", TrainConfig())
    explicit = inner.ratings[inner.explicit_mask()]
    assert not _pairs(explicit) & _pairs(splits.test)
    assert len(explicit) == len(splits.train) + len(splits.validation)
    # The implicit interactions stay: they are never test rows.
    assert len(inner.ratings) - len(explicit) == int((~dataset.explicit_mask()).sum())
    assert set(inner.ratings["line"]) == set(dataset.ratings["line"]) - set(splits.test["line"])
    assert inner.folds == {}


def test_a_folds_inner_rows_are_its_base_file(dataset_and_splits):
    dataset, splits = dataset_and_splits
    base = pd.concat([splits.train, splits.validation], ignore_index=True)
    with_fold = dataclasses.replace(dataset, folds={"u1": (base, splits.test)})
    inner = inner_split.inner_dataset(with_fold, "u1", TrainConfig())
    assert _pairs(inner.ratings) == _pairs(base) and len(inner.ratings) == len(base)
    assert inner.folds == {}
    # A base file that shares a pair with its test file is refused, naming one such pair.
    leaked = dataclasses.replace(dataset, folds={"u1": (pd.concat([base, splits.test[:3]]),
                                                        splits.test)})
    first = splits.test.iloc[0]
    with pytest.raises(ValueError, match=rf"3 \(user, item\) pairs .*{first['item_id']}"):
        inner_split.inner_dataset(leaked, "u1", TrainConfig())


def test_inner_rows_need_one_source_line_per_rating(dataset_and_splits):
    dataset = dataset_and_splits[0]
    ratings = dataset.ratings.copy()
    ratings.loc[ratings.index[:2], "line"] = ratings["line"].iloc[0]
    with pytest.raises(ValueError, match="source lines are not unique"):
        inner_split.inner_dataset(dataclasses.replace(dataset, ratings=ratings), "random",
                                  TrainConfig())
    without = dataclasses.replace(dataset, ratings=dataset.ratings.drop(columns="line"))
    with pytest.raises(ValueError, match="no 'line' column"):
        inner_split.inner_dataset(without, "random", TrainConfig())
