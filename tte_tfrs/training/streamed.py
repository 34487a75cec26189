"""Training rows in sharded block files: written once, read by tf.data every epoch.

`write_streamed` turns a `StreamedDataset` (ratings on disk) into what training reads: the split,
the vocabularies (from the training rows' counts of each user and item, weighted onto their
features), and every usable rating preprocessed (the towers' string work done once, as the
in-memory path does) and written to TFRecord shards of blocks. The users and items tables are
preprocessed once and each chunk of ratings gathers its rows from them, so the ratings never
need to be in memory together. Training rows reach their shard in a random order: each row draws a
bucket, and every bucket is shuffled in memory before it is cut into blocks of one batch.
`write_tensors` does the same for preprocessed in-memory rows (a parameter-server cluster's workers
read files, not the coordinator's memory).

`ShardedData` says which files hold which split; with several workers each reads its own shards
(shard ``i`` belongs to worker ``i % workers``). `evaluate` runs a model over a split's files and
returns the sums behind RMSE and MAE, on one process, on every worker of a
`MultiWorkerMirroredStrategy` (each its own shards, then summed across workers) or on the workers
of a `ParameterServerStrategy` (one scheduled closure per file, so each row counts exactly once).

May import: tte_tfrs.data, tte_tfrs.model, tte_tfrs.training.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pandas as pd
import tensorflow as tf

from tte_tfrs.data import streaming
from tte_tfrs.data.dataset import fill_missing
from tte_tfrs.data.streaming import SPLIT_NAMES, TEST, TRAIN, StreamedDataset
from tte_tfrs.model.towers import ITEM, USER
from tte_tfrs.model.two_tower import RATING, TwoTowerRatingModel
from tte_tfrs.model.vocabulary import add_counts, count_values, rank_values

SHARD_ROWS = 1 << 18        # about this many rows per shard file
EVAL_BLOCK = 8192           # rows per block of validation and test files
SLICE_ROWS = 1 << 16        # users or items converted to Python strings or tensors at a time


@dataclasses.dataclass
class ShardedData:
    """Preprocessed rows of each split in TFRecord block files.

    Attributes:
      folder: where the files are.
      spec: the nested `tf.TypeSpec` of a block (what `TwoTowerRatingModel.preprocess` returns).
      files: split name -> its shard files (all of them, whoever wrote them).
      rows: split name -> rows in the split (all workers together).
      block_rows: rows per training block (one replica's batch).
    """

    folder: str
    spec: object
    files: dict
    rows: dict
    block_rows: int

    def own(self, split: str, worker: int = 0, workers: int = 1) -> list:
        """The files of `split` that `worker` of `workers` reads."""
        return [f for n, f in enumerate(self.files[split]) if n % workers == worker]

    def training(self, seed: int, worker: int = 0, workers: int = 1,
                 repeat: bool = False) -> tf.data.Dataset:
        """`worker`'s training batches, in a fresh seeded order every epoch."""
        return streaming.read_blocks(self.own("train", worker, workers), self.spec, shuffle=True,
                                     seed=seed + worker, repeat=repeat)


# ---------------------------------------------------------------------------------------------
# Writing.

def side_tables(data: StreamedDataset) -> tuple[dict, dict]:
    """(user columns, item columns) of every user and item code, with each feature's unknown value
    where a table lacks the row. Number columns are float32 arrays; string columns stay pandas
    strings (Arrow memory, a few bytes a value): `column_rows` turns a slice into numpy."""
    return (_columns(data.users, "user_id", data.rating_users, data.user_features),
            _columns(data.items, "item_id", data.rating_items, data.item_features))


def _columns(table, key, extra_ids, specs):
    # As fill_missing over the table with the rating-only ids appended (it works value by value).
    parts = [fill_missing(table, specs),
             fill_missing(pd.DataFrame({key: pd.Series(extra_ids, dtype=str)}), specs)]
    columns = {}
    for spec in specs:
        column = pd.concat([part[spec.name] for part in parts], ignore_index=True)
        columns[spec.name] = (column.to_numpy(np.float32) if spec.kind == "number"
                              else column.astype(str))
    return columns


def column_rows(column, rows) -> np.ndarray:
    """Rows `rows` (a slice or positions) of a `side_tables` column as numpy (strings as objects)."""
    if isinstance(column, np.ndarray):
        return column[rows]
    return column.iloc[rows].to_numpy(dtype=object)


def training_counts(data: StreamedDataset, labels: np.ndarray, include_implicit: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training ratings in file order, training rows per user code, per item code)."""
    ratings, user_rows, item_rows = [], [], []
    position = 0
    for frame in data.iter_ratings(codes=True):
        frame = frame[data.usable(frame, include_implicit)]
        train = labels[position:position + len(frame)] == TRAIN
        position += len(frame)
        ratings.append(frame["rating"].to_numpy()[train])
        user_rows.append(frame["user_code"].to_numpy()[train])
        item_rows.append(frame["item_code"].to_numpy()[train])
    users = len(data.users) + len(data.rating_users)
    items = len(data.items) + len(data.rating_items)
    return (np.concatenate(ratings) if ratings else np.zeros(0, np.float32),
            np.bincount(np.concatenate(user_rows or [np.zeros(0, np.int64)]), minlength=users),
            np.bincount(np.concatenate(item_rows or [np.zeros(0, np.int64)]), minlength=items))


def streamed_vocabularies(data: StreamedDataset, user_columns: dict, item_columns: dict,
                          user_counts: np.ndarray, item_counts: np.ndarray, min_count: int,
                          max_text_tokens: int) -> dict:
    """The vocabularies `build_vocabularies` gives for the joined training rows, from the distinct
    users and items of those rows weighted by their row counts, counted a slice at a time."""
    out = {}
    for specs, columns, counts in ((data.user_features, user_columns, user_counts),
                                   (data.item_features, item_columns, item_counts)):
        used = np.flatnonzero(counts)
        parts = []
        for start in range(0, max(1, len(used)), SLICE_ROWS):
            rows = used[start:start + SLICE_ROWS]
            part = count_values(specs, {k: column_rows(v, rows) for k, v in columns.items()},
                                weights=counts[rows])
            # Values as pandas strings (Arrow memory), not one Python object each.
            parts.append({k: c.set_axis(c.index.astype(str)) for k, c in part.items()})
        out.update(rank_values(specs, add_counts(parts), min_count, max_text_tokens))
    return out


def write_streamed(data: StreamedDataset, labels: np.ndarray, include_implicit: bool,
                   model: TwoTowerRatingModel, user_columns: dict, item_columns: dict,
                   folder: str, block_rows: int, seed: int, readers: int = 1,
                   writer: tuple[int, int] = (0, 1)) -> ShardedData:
    """Preprocesses every usable rating with `model` and writes `worker`'s shards of each split.

    Args:
      labels: the split of every usable rating (`StreamedDataset.split`).
      model: a (plain) model built on the vocabularies; only its `preprocess` runs.
      folder: where the shards go (created).
      block_rows: rows per training block (the batch one replica takes in a step).
      readers: how many workers will read the shards (each split gets at least one shard each).
      writer: (index, count): this process writes shard ``i`` when ``i % count == index``
        (every multi-worker worker writes the shards it reads; one process writes them all).
    """
    os.makedirs(folder, exist_ok=True)
    users = _preprocess_slices(model.user_tower.preprocess, user_columns)
    items = _preprocess_slices(model.item_tower.preprocess, item_columns)
    sizes = {name: int((labels == code).sum()) for code, name in enumerate(SPLIT_NAMES)}
    shards = {name: max(readers, math.ceil(sizes[name] / SHARD_ROWS)) for name in SPLIT_NAMES}
    writers = _Writers(folder, shards, *writer)
    rng = np.random.default_rng(seed)
    position = 0
    seen = dict.fromkeys(SPLIT_NAMES, 0)
    spec = None
    try:
        for frame in data.iter_ratings(codes=True):
            frame = frame[data.usable(frame, include_implicit)]
            split = labels[position:position + len(frame)]
            position += len(frame)
            train_bucket = rng.integers(shards["train"], size=len(frame))
            for code, name in enumerate(SPLIT_NAMES):
                rows = np.flatnonzero(split == code)
                if name == "train":
                    bucket = train_bucket[rows]
                else:       # validation and test: rows dealt out in turn, in file order
                    bucket = (seen[name] + np.arange(len(rows))) % shards[name]
                seen[name] += len(rows)
                for shard in writers.mine(name):
                    chosen = rows[bucket == shard]
                    if not len(chosen):
                        continue
                    block = _block(users, items, frame.iloc[chosen])
                    spec = spec or streaming.block_spec(block)
                    writers.write(name, shard, block)
        files = writers.finish(block_rows, rng_seed=seed, spec=spec)
    except BaseException:
        writers.abort()
        raise
    return ShardedData(folder=folder, spec=spec or _empty_spec(users, items), files=files,
                       rows=sizes, block_rows=block_rows)


def _preprocess_slices(preprocess, columns, size=SLICE_ROWS):
    """`preprocess` over numpy columns a slice at a time (only one slice is ever a string tensor),
    the results joined: what `preprocess_columns` gives."""
    n = len(next(iter(columns.values())))
    parts = [preprocess({k: tf.constant(column_rows(v, slice(start, start + size)))
                         for k, v in columns.items()})
             for start in range(0, n, size)]
    return tf.nest.map_structure(lambda *p: tf.concat(p, axis=0), *parts)


def write_tensors(tensors: dict, folder: str, block_rows: int, seed: int, workers: int
                  ) -> ShardedData:
    """Writes preprocessed in-memory rows (split name -> nested tensors) as `ShardedData`,
    training rows in a seeded random order."""
    os.makedirs(folder, exist_ok=True)
    files, rows, spec = {}, {}, None
    rng = np.random.default_rng(seed)
    for name in SPLIT_NAMES:
        block = tensors[name]
        n = streaming.block_rows(block)
        rows[name] = n
        spec = spec or streaming.block_spec(block)
        order = rng.permutation(n) if name == "train" else np.arange(n)
        size = block_rows if name == "train" else EVAL_BLOCK
        count = max(workers, math.ceil(n / SHARD_ROWS))
        files[name] = [os.path.join(folder, f"{name}-{i:05d}-of-{count:05d}.tfrecord")
                       for i in range(count)]
        writers = [tf.io.TFRecordWriter(path) for path in files[name]]
        try:
            for number, start in enumerate(range(0, n, size)):
                part = streaming.take_rows(block, order[start:start + size])
                writers[number % count].write(streaming.encode_block(part))
        finally:
            for writer in writers:
                writer.close()
    return ShardedData(folder=folder, spec=spec, files=files, rows=rows, block_rows=block_rows)


def _block(users, items, frame):
    user_rows = tf.constant(frame["user_code"].to_numpy(), tf.int64)
    item_rows = tf.constant(frame["item_code"].to_numpy(), tf.int64)
    return {USER: tf.nest.map_structure(lambda t: tf.gather(t, user_rows), users),
            ITEM: tf.nest.map_structure(lambda t: tf.gather(t, item_rows), items),
            RATING: tf.constant(frame["rating"].to_numpy(np.float32))}


def _empty_spec(users, items):
    return streaming.block_spec({USER: tf.nest.map_structure(lambda t: t[:0], users),
                                 ITEM: tf.nest.map_structure(lambda t: t[:0], items),
                                 RATING: tf.zeros([0], tf.float32)})


class _Writers:
    """Open TFRecord writers of this worker's shards. Training rows go to bucket files first; at
    `finish` each bucket is shuffled and cut into blocks of one batch."""

    def __init__(self, folder, shards, worker, workers):
        self.folder, self.shards, self.worker, self.workers = folder, shards, worker, workers
        self.writers = {}
        self.paths = {name: [self._path(name, i) for i in range(count)]
                      for name, count in shards.items()}

    def _path(self, name, shard):
        return os.path.join(self.folder, f"{name}-{shard:05d}-of-{self.shards[name]:05d}.tfrecord")

    def mine(self, name):
        return [i for i in range(self.shards[name]) if i % self.workers == self.worker]

    def write(self, name, shard, block):
        key = (name, shard)
        if key not in self.writers:
            path = self.paths[name][shard] + (".bucket" if name == "train" else "")
            self.writers[key] = tf.io.TFRecordWriter(path)
        if name == "train":
            self.writers[key].write(streaming.encode_block(block))
            return
        n = streaming.block_rows(block)
        for start in range(0, n, EVAL_BLOCK):
            part = streaming.take_rows(block, np.arange(start, min(start + EVAL_BLOCK, n)))
            self.writers[key].write(streaming.encode_block(part))

    def finish(self, block_rows, rng_seed, spec):
        for writer in self.writers.values():
            writer.close()
        rng = np.random.default_rng(rng_seed + 1)
        for shard in self.mine("train"):
            bucket = self.paths["train"][shard] + ".bucket"
            order_seed = rng.integers(2 ** 31)
            with tf.io.TFRecordWriter(self.paths["train"][shard]) as writer:
                if not os.path.exists(bucket):
                    continue
                parts = [block for block in streaming.read_blocks([bucket], spec)]
                rows = tf.nest.map_structure(lambda *p: tf.concat(p, axis=0), *parts)
                n = streaming.block_rows(rows)
                order = np.random.default_rng(order_seed).permutation(n)
                for start in range(0, n, block_rows):
                    writer.write(streaming.encode_block(
                        streaming.take_rows(rows, order[start:start + block_rows])))
            os.remove(bucket)
        for name in ("validation", "test"):
            for shard in self.mine(name):
                if (name, shard) not in self.writers:       # an empty shard is an empty file
                    tf.io.TFRecordWriter(self.paths[name][shard]).close()
        return self.paths

    def abort(self):
        for writer in self.writers.values():
            writer.close()


# ---------------------------------------------------------------------------------------------
# Evaluation over files.

def _sums(model: TwoTowerRatingModel, blocks: tf.data.Dataset) -> tf.Tensor:
    """[squared error, absolute error, rows] summed over `blocks` (float64)."""

    def add(total, block):
        error = tf.cast(block[RATING] - model.score(block), tf.float64)
        return total + tf.stack([tf.reduce_sum(error * error), tf.reduce_sum(tf.abs(error)),
                                 tf.cast(tf.size(error), tf.float64)])

    return blocks.reduce(tf.zeros([3], tf.float64), add)


class Evaluator:
    """RMSE, MAE and rows of a model on a split's files (see the module docstring); the traced
    functions are kept, so evaluating every epoch traces once."""

    def __init__(self, model: TwoTowerRatingModel, sharded: ShardedData,
                 strategy: tf.distribute.Strategy | None = None, worker: int = 0, workers: int = 1):
        self.model, self.sharded, self.strategy = model, sharded, strategy
        self.worker, self.workers = worker, workers
        spec = sharded.spec
        self._file_sums = tf.function(lambda path: _sums(model, streaming.read_file_blocks(path, spec)))
        self._files_sums = tf.function(lambda files: _sums(model, streaming.read_blocks(files, spec)))

    def __call__(self, split: str) -> dict:
        if isinstance(self.strategy, tf.distribute.experimental.ParameterServerStrategy):
            coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(self.strategy)
            values = [coordinator.schedule(self._file_sums, args=(tf.constant(path),))
                      for path in self.sharded.files[split]]
            coordinator.join()
            total = np.sum([v.fetch() for v in values], axis=0) if values else np.zeros(3)
        else:
            files = self.sharded.own(split, self.worker, self.workers)
            total = self._files_sums(tf.constant(files, tf.string)).numpy() if files else np.zeros(3)
            if self.strategy is not None and self.workers > 1:      # every worker's own shards
                local = tf.constant(total)
                value = self.strategy.experimental_distribute_values_from_function(
                    lambda context: local)
                total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None).numpy()
        sse, sae, n = (float(x) for x in total)
        return {"rmse": math.sqrt(sse / n) if n else float("nan"),
                "mae": sae / n if n else float("nan"), "mse": sse / n if n else float("nan"),
                "rows": int(n)}


class FileValidation(tf.keras.callbacks.Callback):
    """Adds ``val_rmse``, ``val_mae`` and ``val_loss`` (the MSE) of the validation files to each
    epoch's logs (before early stopping reads them), exactly once per row on every strategy."""

    def __init__(self, sharded: ShardedData, strategy, worker: int, workers: int):
        super().__init__()
        self.sharded, self.strategy = sharded, strategy
        self.worker, self.workers = worker, workers
        self.evaluator = None

    def on_epoch_end(self, epoch, logs=None):
        if self.evaluator is None:
            self.evaluator = Evaluator(self.model, self.sharded, self.strategy, self.worker,
                                       self.workers)
        result = self.evaluator("validation")
        if logs is not None:
            logs.update(val_rmse=result["rmse"], val_mae=result["mae"], val_loss=result["mse"])


def splits_of(labels: np.ndarray) -> dict:
    return {name: int((labels == code).sum()) for code, name in enumerate(SPLIT_NAMES)}


def test_ratings(data: StreamedDataset, labels: np.ndarray, include_implicit: bool,
                 split: int = TEST) -> np.ndarray:
    """The ratings of one split in file order (for the global-mean baseline)."""
    out, position = [], 0
    for frame in data.iter_ratings():
        frame = frame[data.usable(frame, include_implicit)]
        chosen = labels[position:position + len(frame)] == split
        position += len(frame)
        out.append(frame["rating"].to_numpy()[chosen])
    return np.concatenate(out) if out else np.zeros(0, np.float32)
