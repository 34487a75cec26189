"""Bags of embedding rows (text, user history): the sparse-product sum equals the ragged sum of
every occurrence, J counts every occurrence, and the table's gradient stays one row per distinct
id."""

import numpy as np
import pytest
import tensorflow as tf

from tte_tfrs.model import bags

IDS = [[1, 2, 1], [], [3], [4, 4, 4, 7]]


def occurrences(embedding):
    return tf.ragged.map_flat_values(embedding, tf.ragged.constant(IDS, dtype=tf.int64))


@pytest.fixture
def embedding():
    layer = tf.keras.layers.Embedding(10, 5, embeddings_initializer=tf.keras.initializers.RandomNormal(
        seed=3))
    layer.build(None)
    return layer


@pytest.mark.parametrize("scale", ["mean", "sqrt", "sum"])
def test_bag_sum_is_the_scaled_sum_of_every_occurrence(embedding, scale):
    rows = occurrences(embedding)
    n = tf.cast(tf.maximum(rows.row_lengths(), 1), tf.float32)[:, tf.newaxis]
    expected = tf.reduce_sum(rows, axis=1) * {"mean": 1 / n, "sqrt": tf.math.rsqrt(n), "sum": 1.0}[scale]
    bag = bags.lookup_bag(embedding, tf.ragged.constant(IDS, dtype=tf.int64), scale)
    assert bag.rows.shape[0] == 5                                    # distinct ids, once each
    np.testing.assert_allclose(bags.bag_sum(bag), expected, rtol=1e-6, atol=1e-7)
    assert not np.any(bags.bag_sum(bag)[1])                          # no ids: zeros


@pytest.mark.parametrize("regularizer", [tf.keras.regularizers.L2(0.15), tf.keras.regularizers.L1(0.3),
                                         tf.keras.regularizers.L1L2(0.1, 0.2)])
def test_bag_penalty_counts_every_occurrence(embedding, regularizer):
    bag = bags.lookup_bag(embedding, tf.ragged.constant(IDS, dtype=tf.int64))
    expected = regularizer(occurrences(embedding).flat_values) / 8
    assert float(bags.bag_penalty(bag, regularizer)) == pytest.approx(float(expected), rel=1e-6)


def test_the_tables_gradient_has_one_row_per_distinct_id(embedding):
    with tf.GradientTape() as tape:
        bag = bags.lookup_bag(embedding, tf.ragged.constant(IDS, dtype=tf.int64))
        loss = tf.reduce_sum(tf.square(bags.bag_sum(bag))) + bags.bag_penalty(
            bag, tf.keras.regularizers.L2(0.1))
    gradient = tape.gradient(loss, embedding.embeddings)
    assert isinstance(gradient, tf.IndexedSlices)
    assert sorted(gradient.indices.numpy().tolist()) == [1, 2, 3, 4, 7]
