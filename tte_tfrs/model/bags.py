"""Bags of embedding rows: the rows a ragged batch of ids (words of a title, items of a user's
history) looks up, and their weighted sum per example, computed through the distinct ids.

A batch of titles repeats its words many times over (about 4,000 words and a few hundred distinct
ones in a batch of 1,024 titles). `lookup_bag` looks each distinct id up once and sums the rows of
each example by one sparse [examples, distinct ids] x [distinct ids, width] product, whose
gradient is a product too; the embedding's gradient then carries one row per distinct id. That
replaced a gather of every occurrence and a ragged sum, whose gradient (a gather and a select per
occurrence) was the largest single cost of a training step with title text.

J still covers every row looked up, each occurrence counted (`bag_penalty`), so batch-scoped J
means what it meant with one lookup per occurrence.

May import: nothing of tte_tfrs.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class Bag(NamedTuple):
    """The rows a ragged batch of ids looked up.

    Attributes:
      rows: [distinct ids, width], the embedding row of each distinct id.
      counts: [distinct ids], how often the batch looked each up (float).
      weights: SparseTensor [examples, distinct ids]: each example's weight on each row.
    """

    rows: tf.Tensor
    counts: tf.Tensor
    weights: tf.SparseTensor


def lookup_bag(embedding: tf.keras.layers.Layer, ids: tf.RaggedTensor, scale: str = "mean") -> Bag:
    """Looks the distinct ids of `ids` up in `embedding` once each.

    Args:
      embedding: the table (an ``Embedding`` layer or any callable ids -> rows).
      ids: [examples, (ids)] row numbers.
      scale: each example's weight on each of its n ids: ``mean`` 1/n, ``sqrt`` 1/sqrt(n),
        ``sum`` 1 (an example without ids gets zeros).
    """
    flat = ids.flat_values
    distinct, position, counts = tf.unique_with_counts(flat, out_idx=tf.int64)
    example = ids.value_rowids()
    lengths = tf.cast(tf.maximum(ids.row_lengths(), 1), tf.float32)
    per_example = {"mean": lambda n: 1.0 / n, "sqrt": tf.math.rsqrt,
                   "sum": tf.ones_like}[scale](lengths)
    weights = tf.sparse.SparseTensor(
        tf.stack([example, position], axis=1), tf.gather(per_example, example),
        tf.stack([ids.nrows(out_type=tf.int64), tf.shape(distinct, out_type=tf.int64)[0]]))
    return Bag(embedding(distinct), tf.cast(counts, tf.float32), weights)


def bag_sum(bag: Bag) -> tf.Tensor:
    """[examples, width]: each example's weighted sum of its rows."""
    return tf.sparse.sparse_dense_matmul(bag.weights, bag.rows)


def bag_penalty(bag: Bag, regularizer: tf.keras.regularizers.Regularizer) -> tf.Tensor:
    """J of every row looked up, each occurrence counted, divided by the number of occurrences:
    what `regularizer` gives on the rows of every occurrence, over their number."""
    total = tf.maximum(tf.reduce_sum(bag.counts), 1.0)
    if isinstance(regularizer, tf.keras.regularizers.L2):       # sum_u n_u l2 |row_u|^2
        return regularizer(bag.rows * tf.sqrt(bag.counts)[:, tf.newaxis]) / total
    if isinstance(regularizer, tf.keras.regularizers.L1):       # sum_u n_u l1 |row_u|
        return regularizer(bag.rows * bag.counts[:, tf.newaxis]) / total
    occurrences = tf.repeat(bag.rows, tf.cast(bag.counts, tf.int64), axis=0)
    return regularizer(occurrences) / total
