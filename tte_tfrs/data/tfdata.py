"""tf.data input pipelines over joined feature columns."""

import tensorflow as tf


def make_tf_dataset(columns, batch_size, shuffle=False, seed=0):
    """Batches a dict of equal-length numpy columns into a prefetched tf.data.Dataset.

    Shuffling uses a buffer the size of the data and a fixed seed, reshuffled every epoch in the same
    sequence on every run. Batching happens before the (cheap) conversion work so each step moves a
    whole batch; prefetching overlaps input with training on the other core.
    """
    n = len(next(iter(columns.values())))
    data = tf.data.Dataset.from_tensor_slices(columns)
    if shuffle:
        data = data.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return data.with_options(options).prefetch(tf.data.AUTOTUNE)


def make_training_dataset(preprocess, columns, batch_size, shuffle=False, seed=0,
                          chunk_size=65536):
    """Runs `preprocess` once over all `columns`, then batches the (integer) result in memory.

    Each epoch then costs a gather per batch instead of the string work per batch. Shuffling
    draws a fresh seeded permutation of the rows every epoch (the same sequence on every run).

    Args:
      preprocess: raw feature batch (dict of tensors) -> nested dict of tensors, e.g.
        `TwoTowerRatingModel.preprocess`; ragged outputs are fine.
      columns: dict of equal-length numpy columns.
    """
    chunks = [preprocess(chunk) for chunk in make_tf_dataset(columns, chunk_size)]
    tensors = tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *chunks)
    n = len(next(iter(columns.values())))
    rows = tf.data.Dataset.range(n)
    if shuffle:
        rows = rows.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    data = rows.batch(batch_size).map(
        lambda index: tf.nest.map_structure(lambda t: tf.gather(t, index), tensors),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return data.with_options(options).prefetch(tf.data.AUTOTUNE)
