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
    draws a fresh seeded permutation of the rows every epoch (the same sequence on every run;
    `shuffled_batches`).

    Args:
      preprocess: raw feature batch (dict of tensors) -> nested dict of tensors, e.g.
        `TwoTowerRatingModel.preprocess`; ragged outputs are fine.
      columns: dict of equal-length numpy columns.
    """
    return batches_of(preprocess_columns(preprocess, columns, chunk_size), batch_size,
                      shuffle=shuffle, seed=seed)


def preprocess_columns(preprocess, columns, chunk_size=65536):
    """`preprocess` run over all `columns` in chunks: a nested dict of whole-data tensors."""
    chunks = [preprocess(chunk) for chunk in make_tf_dataset(columns, chunk_size)]
    return tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *chunks)


def batches_of(tensors, batch_size, shuffle=False, seed=0, part=None):
    """Batches of the rows of a nested dict of in-memory tensors (`preprocess_columns`).

    Args:
      part: (index, count): only the index-th of `count` equal slices of every batch, for one of
        `count` replicas that share each step (the slices together are the whole batch).
    """
    n = _rows(tensors)
    rows = shuffled_batches(n, batch_size, seed) if shuffle else tf.data.Dataset.range(n).batch(
        batch_size)
    if part is not None:
        index, count = part
        rows = rows.map(lambda batch: _slice(batch, index, count))
    data = rows.map(
        lambda index: tf.nest.map_structure(lambda t: tf.gather(t, index), tensors),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return data.with_options(options).prefetch(tf.data.AUTOTUNE)


def shuffled_batches(n, batch_size, seed):
    """Row numbers 0..n-1 in batches, in a fresh seeded permutation on every pass (every epoch,
    and every repetition under ``repeat``), the same sequence of permutations on every run.

    Each pass draws its permutation in one op: a per-element ``shuffle`` of the row numbers cost
    more than a training step of the default model.
    """
    def batches(key):
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                         seed=tf.stack([key, seed]))
        return tf.data.Dataset.range(0, n, batch_size).map(
            lambda start: order[start:start + batch_size])
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return keys.flat_map(batches).apply(
        tf.data.experimental.assert_cardinality(-(-n // batch_size)))


def _rows(tensors):
    first = tf.nest.flatten(tensors)[0]
    return int(first.shape[0] if not isinstance(first, tf.RaggedTensor) else first.nrows())


def _slice(batch, index, count):
    size = tf.shape(batch, out_type=tf.int64)[0]
    share = (size + count - 1) // count
    return batch[tf.minimum(index * share, size):tf.minimum((index + 1) * share, size)]
