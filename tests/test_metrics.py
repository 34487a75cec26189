"""Metrics against examples computed by hand."""

import math

import pytest

from tte_tfrs.evaluation import metrics

# Two users: u1 has relevant {a, c, x} (x never recommended), u2 has relevant {e}; u3 has none.
RECOMMENDED = [["a", "b", "c", "d"], ["d", "e", "f", "g"], ["a", "b", "c", "d"]]
RELEVANT = [{"a", "c", "x"}, {"e"}, set()]


def test_rmse_and_mae():
    assert metrics.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert metrics.mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)


def test_recall_precision_hit_rate():
    # k=2: u1 finds a (1 of 3), u2 finds e (1 of 1).
    assert metrics.recall_at_k(RECOMMENDED, RELEVANT, 2) == pytest.approx((1 / 3 + 1) / 2)
    assert metrics.precision_at_k(RECOMMENDED, RELEVANT, 2) == pytest.approx((1 / 2 + 1 / 2) / 2)
    # k=1: u1 hits (a), u2 misses (d).
    assert metrics.hit_rate_at_k(RECOMMENDED, RELEVANT, 1) == pytest.approx(0.5)
    assert metrics.recall_at_k(RECOMMENDED, RELEVANT, 4) == pytest.approx((2 / 3 + 1) / 2)


def test_ndcg():
    # u1 at k=3: gains 1,0,1 -> DCG = 1 + 1/log2(4) = 1.5; ideal for 3 relevant: 1 + 1/log2(3) + 1/2.
    u1 = 1.5 / (1 + 1 / math.log2(3) + 0.5)
    # u2 at k=3: gain at rank 2 -> 1/log2(3); ideal with one relevant: 1.
    u2 = 1 / math.log2(3)
    assert metrics.ndcg_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx((u1 + u2) / 2)
    assert metrics.ndcg_at_k([["a"]], [{"a"}], 5) == pytest.approx(1.0)


def test_mrr():
    assert metrics.mrr(RECOMMENDED, RELEVANT) == pytest.approx((1 + 1 / 2) / 2)
    assert metrics.mrr(RECOMMENDED, RELEVANT, k=1) == pytest.approx((1 + 0) / 2)


def test_coverage():
    assert metrics.coverage(RECOMMENDED, 10, k=2) == pytest.approx(4 / 10)     # a, b, d, e


def test_ranking_metrics_skips_users_without_relevant_items():
    result = metrics.ranking_metrics(RECOMMENDED, RELEVANT, 2, catalogue_size=10)
    assert result["users_evaluated"] == 2
    assert result["recall@2"] == pytest.approx((1 / 3 + 1) / 2)
    assert math.isnan(metrics.recall_at_k([["a"]], [set()], 1))
