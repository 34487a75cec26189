"""Training beyond one process or one machine's memory: a `tf.distribute` strategy, streamed data.

`tte_tfrs.training.trainer.train` hands over to `train` when ``TrainConfig.strategy`` is set or the
data is read by streaming (`uses_scaled_path`). It takes the same steps (split, vocabularies,
towers, fit with early stopping, metrics) and returns the same `TrainResult`, whose model is a
plain single-process copy of the trained one, so the usual writer exports it.

Where the training rows live:

- in memory (`input_mode=memory`, or auto below the threshold): each multi-worker worker
  preprocesses all rows and takes its slice of every global batch (steps equal the
  single-process steps); a parameter-server coordinator writes them to shard files for the
  workers (`tte_tfrs.training.streamed.write_tensors`).
- streamed (`input_mode=streaming`, or auto above ``streaming_threshold_mb``): the files are read
  in chunks (`tte_tfrs.data.streaming`) and the rows written once to shard files
  (`tte_tfrs.training.streamed.write_streamed`), each worker reading its own shards; validation
  and test metrics are summed over the files (`tte_tfrs.training.streamed.evaluate`).

May import: tte_tfrs.data, tte_tfrs.model, tte_tfrs.evaluation.metrics, tte_tfrs.training.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tte_tfrs.data import streaming
from tte_tfrs.data.dataset import Dataset
from tte_tfrs.data.streaming import StreamedDataset
from tte_tfrs.data.tfdata import batches_of, preprocess_columns
from tte_tfrs.errors import ConfigError
from tte_tfrs.model.two_tower import RATING, TwoTowerRatingModel
from tte_tfrs.model.vocabulary import build_vocabularies
from tte_tfrs.training import distributed, streamed
from tte_tfrs.training import trainer as training
from tte_tfrs.training.config import TrainConfig


def wants_streaming(config: TrainConfig, dataset: object = None) -> bool:
    """Whether the data of `config` is read by streaming: forced by ``input_mode``, else when the
    ratings file is larger than ``streaming_threshold_mb`` (a given dataset decides by its type)."""
    if dataset is not None:
        return isinstance(dataset, StreamedDataset)
    if config.input_mode != "auto":
        return config.input_mode == "streaming"
    size = streaming.ratings_file_bytes(config.data_dir, config.dataset)
    return size is not None and size > config.streaming_threshold_mb * 1e6


def uses_scaled_path(config: TrainConfig, dataset: object = None) -> bool:
    """Whether `config` trains under a strategy or streams its data (this module's `train`)."""
    return config.strategy != distributed.NONE or wants_streaming(config, dataset)


def check_supported(config: TrainConfig, dataset: object = None) -> None:
    """Refuses settings this path does not train (rather than training something else).

    Raises:
      ConfigError: ``user_history``, ``item_history``, tuning, an ensemble, ``refit`` or ``retrieval_weight``,
        naming the flag that turns it off.
    """
    where = (f"strategy={config.strategy}" if config.strategy != distributed.NONE
             else "streamed input (input_mode=streaming, or auto above streaming_threshold_mb)")
    for field in ("user_history", "item_history"):
        if getattr(config, field):
            raise ConfigError(f"{field} is not supported with {where}; train without it "
                              f"(--no{field}) or in one process with input_mode=memory",
                              field=field)
    for field in ("tune_trials", "tune_minutes"):
        if getattr(config, field):
            raise ConfigError(f"{field} (tuning) is not supported with {where}; tune in one "
                              "process with input_mode=memory and pass the chosen settings",
                              field=field)
    if config.ensemble_members != 1:
        raise ConfigError(f"ensemble_members is not supported with {where}; set "
                          "--ensemble_members=1 or train in one process with input_mode=memory",
                          field="ensemble_members")
    if config.refit:
        raise ConfigError(f"refit is not supported with {where}; leave it out (--norefit) or "
                          "train in one process with input_mode=memory", field="refit")
    if config.retrieval_weight:
        raise ConfigError(f"retrieval_weight is not supported with {where}; set "
                          "--retrieval_weight=0 or train in one process with input_mode=memory",
                          field="retrieval_weight")


@dataclasses.dataclass
class SplitSizes:
    """The sizes of a split kept on disk (what `Splits.sizes` gives for one in memory)."""

    train: int
    validation: int
    test: int

    def sizes(self) -> dict:
        return dataclasses.asdict(self)

    def hashes(self) -> dict:
        """No membership hashes: the rows stay on disk (`Splits.hashes` needs them in memory), so
        the export records none and tte-evaluate says it cannot verify the held-out rows."""
        return {}


@dataclasses.dataclass
class _Prepared:
    """What the fit needs, whichever way the rows are held."""

    dataset: object
    splits: object
    global_mean: float
    vocabularies: dict
    plain: TwoTowerRatingModel            # built outside the strategy: preprocessing, then the copy
    sample: dict                          # one raw row, to build a model
    fit_args: Callable[[tf.distribute.Strategy], dict]
    callbacks: list
    n_train: int
    final_metrics: Callable[[TwoTowerRatingModel, TwoTowerRatingModel], dict]
    cleanup: Callable[[], None]


def train(config: TrainConfig, dataset: Dataset | StreamedDataset | None = None
          ) -> training.TrainResult:
    """`tte_tfrs.training.trainer.train` under ``config.strategy`` and/or with streamed data.

    A ps task or a parameter-server worker serves until it is stopped and never returns.

    Raises:
      DataError, ConfigError: as `trainer.train`; ConfigError also for a ``TF_CONFIG`` that does
        not fit the strategy.
    """
    check_supported(config, dataset)
    role, strategy = distributed.start(config)
    if not role.trains:
        distributed.serve(role)
    training.seed_process(config)
    if wants_streaming(config, dataset):
        prepared = _prepare_streamed(config, role, strategy, dataset)
    else:
        prepared = _prepare_in_memory(config, role, strategy, dataset)
    try:
        with strategy.scope():
            # One process trains the plain model itself (no second copy of the tables).
            model = prepared.plain if config.strategy == distributed.NONE else _build(config, prepared)
            model.compile(optimizer=training.make_optimizer(config))
        backup = distributed.backup_callbacks(config.backup_dir, role)
        timer, callbacks = training.make_callbacks(config, prepared.callbacks, backup)
        started = time.perf_counter()
        try:
            fitted = model.fit(epochs=config.epochs, callbacks=callbacks, verbose=config.verbose,
                               **prepared.fit_args(strategy))
        except distributed.LOST as exc:
            raise distributed.lost_worker(exc, config.backup_dir) from None
        history, metrics = training.fit_summary(fitted.history, timer, prepared.n_train,
                                                time.perf_counter() - started)
        if backup:          # a restarted run: its history has the epochs before the restart too
            first = min(fitted.epoch, default=0)
            history = backup[1].full_history(history, first)
            backup[1].finish()
            metrics["epochs_run"] = len(history.get("loss", []))
            if first:
                metrics["resumed_after_epoch"] = first
        plain = (model if config.strategy == distributed.NONE
                 else distributed.plain_copy(model, lambda: prepared.plain))
        if config.strategy == distributed.PARAMETER_SERVER:
            metrics["sharded_tables"] = distributed.sharded_tables(model)
        metrics.update(prepared.final_metrics(model, plain))
    finally:
        prepared.cleanup()
    metrics["strategy"] = config.strategy
    metrics["cluster"] = role.describe()
    metrics["input"] = "streaming" if isinstance(prepared.dataset, StreamedDataset) else "memory"
    return training.TrainResult(model=plain, config=config, dataset=prepared.dataset,
                                splits=prepared.splits, metrics=metrics, history=history)


def _build(config, prepared):
    model = training.build_model(config, prepared.dataset, {}, prepared.global_mean,
                                 prepared.vocabularies)
    model(prepared.sample)              # creates the weights (BackupAndRestore needs them)
    return model


def _build_plain(config, dataset, global_mean, vocabularies, sample):
    model = training.build_model(config, dataset, {}, global_mean, vocabularies)
    model(sample)
    return model


# ---------------------------------------------------------------------------------------------
# Rows in memory.

def _prepare_in_memory(config, role, strategy, dataset):
    dataset, splits, train_columns, validation_columns = training.start(config, dataset)
    global_mean = float(np.mean(train_columns[RATING]))
    vocabularies = build_vocabularies(dataset.user_features + dataset.item_features, train_columns,
                                      config.min_count, config.max_text_tokens)
    sample = {k: v[:1] for k, v in train_columns.items() if k != RATING}
    plain = _build_plain(config, dataset, global_mean, vocabularies, sample)
    tensors = {"train": preprocess_columns(plain.preprocess, train_columns),
               "validation": preprocess_columns(plain.preprocess, validation_columns)}
    n_train = len(train_columns[RATING])
    callbacks, cleanup = [], lambda: None

    def final_metrics(model, copy):
        return training.evaluate_splits(copy, dataset, splits, validation_columns, global_mean)

    if config.strategy == distributed.PARAMETER_SERVER:
        folder = _shard_folder(config)
        cleanup = lambda: shutil.rmtree(folder, ignore_errors=True)  # noqa: E731
        tensors["test"] = tf.nest.map_structure(lambda t: t[:0], tensors["validation"])
        sharded = streamed.write_tensors(tensors, folder, config.batch_size, config.seed,
                                         role.num_workers)
        callbacks = [streamed.FileValidation(sharded, strategy, 0, 1)]
        fit_args = lambda strategy: _ps_fit_args(strategy, config, sharded, n_train)  # noqa: E731
    else:
        fit_args = lambda strategy: _memory_fit_args(strategy, config, tensors)  # noqa: E731
    return _Prepared(dataset=dataset, splits=splits, global_mean=global_mean,
                     vocabularies=vocabularies, plain=plain, sample=sample, fit_args=fit_args,
                     callbacks=callbacks, n_train=n_train, final_metrics=final_metrics,
                     cleanup=cleanup)


def _memory_fit_args(strategy, config, tensors):
    """Each input pipeline (worker) takes its slice of every global batch, so a step is the
    single-process step; the datasets repeat and the steps per epoch say where an epoch ends."""
    distributed.replica_batch(config.batch_size, strategy)
    replicas = strategy.num_replicas_in_sync
    validation_batch = training.PREDICT_BATCH - training.PREDICT_BATCH % replicas

    def make(rows, batch, shuffle):
        def fn(context):
            part = (context.input_pipeline_id, context.num_input_pipelines)
            return batches_of(rows, batch, shuffle=shuffle, seed=config.seed,
                              part=part if context.num_input_pipelines > 1 else None).repeat()
        return distributed.distribute(strategy, fn)

    n_train = streaming.block_rows(tensors["train"])
    n_validation = streaming.block_rows(tensors["validation"])
    return dict(x=make(tensors["train"], config.batch_size, True),
                steps_per_epoch=math.ceil(n_train / config.batch_size),
                validation_data=make(tensors["validation"], validation_batch, False),
                validation_steps=math.ceil(n_validation / validation_batch))


def _ps_fit_args(strategy, config, sharded, n_train):
    """Parameter servers: every worker reads its own shards, repeated; an epoch is as many
    (asynchronous, whole-batch) steps as one pass over the training rows needs."""

    def fn(context):
        return sharded.training(config.seed, context.input_pipeline_id,
                                context.num_input_pipelines, repeat=True)

    return dict(x=distributed.distribute(strategy, fn),
                steps_per_epoch=max(1, math.ceil(n_train / config.batch_size)))


# ---------------------------------------------------------------------------------------------
# Streamed rows.

def _prepare_streamed(config, role, strategy, dataset):
    if config.split != "random":
        raise ConfigError(f"split {config.split!r}: streaming reads Book-Crossing data, whose split "
                          "is random (MovieLens folds are read with --input_mode=memory)",
                          field="split")
    data = dataset if dataset is not None else streaming.read_streamed(
        config.data_dir, config.dataset, work_dir=config.streaming_dir)
    labels = data.split(config.validation_fraction, config.test_fraction, config.include_implicit,
                        config.seed)
    sizes = streamed.splits_of(labels)
    for name, size in sizes.items():
        if size == 0 and not (name == "test" and config.test_fraction == 0):
            raise ConfigError(f"the {name} split is empty: the data set has too few usable "
                              f"ratings ({data.totals['ratings']} rows)")
    train_ratings, user_counts, item_counts = streamed.training_counts(data, labels,
                                                                       config.include_implicit)
    global_mean = float(np.mean(train_ratings))
    user_columns, item_columns = streamed.side_tables(data)
    vocabularies = streamed.streamed_vocabularies(data, user_columns, item_columns, user_counts,
                                                  item_counts, config.min_count,
                                                  config.max_text_tokens)
    sample = {k: streamed.column_rows(v, slice(0, 1))
              for k, v in {**user_columns, **item_columns}.items()}
    plain = _build_plain(config, data, global_mean, vocabularies, sample)

    multi = config.strategy == distributed.MULTI_WORKER
    block = distributed.replica_batch(config.batch_size, strategy) if multi else config.batch_size
    worker = _worker_index(role) if multi else 0
    workers = role.num_workers if config.strategy != distributed.NONE else 1
    folder = _shard_folder(config)
    try:
        sharded = streamed.write_streamed(
            data, labels, config.include_implicit, plain, user_columns, item_columns, folder,
            block, config.seed, readers=workers, writer=(worker, workers) if multi else (0, 1))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    test_ratings = streamed.test_ratings(data, labels, config.include_implicit)
    mine = (worker, workers) if multi else (0, 1)
    evaluating = strategy if config.strategy != distributed.NONE else None

    def fit_args(strategy):
        steps = max(1, math.ceil(sizes["train"] / config.batch_size))
        if config.strategy == distributed.PARAMETER_SERVER:
            return _ps_fit_args(strategy, config, sharded, sizes["train"])
        if multi:       # each worker reads the shards it wrote
            return dict(x=distributed.distribute(
                strategy, lambda context: sharded.training(config.seed, worker, workers, repeat=True)),
                steps_per_epoch=steps)
        return dict(x=sharded.training(config.seed))

    # Bytes on disk per preprocessed row (this process's shards: about its share of the rows).
    shard_bytes = sum(os.path.getsize(f) for files in sharded.files.values() for f in files
                      if os.path.exists(f))
    bytes_per_row = shard_bytes / max(1, sum(sizes.values()) // (workers if multi else 1))

    def final_metrics(model, copy):
        out = {"shard_bytes_per_row": round(bytes_per_row, 1)}
        evaluate = streamed.Evaluator(model, sharded, evaluating, *mine)
        validation = evaluate("validation")
        out["validation_rmse"], out["validation_mae"] = validation["rmse"], validation["mae"]
        if sizes["test"]:
            test = evaluate("test")
            out["test_rmse"], out["test_mae"] = test["rmse"], test["mae"]
            out["baseline_rmse"], out["baseline_mae"] = training.rmse_mae(
                test_ratings, np.full(len(test_ratings), global_mean))
        return out

    return _Prepared(dataset=data, splits=SplitSizes(**sizes), global_mean=global_mean,
                     vocabularies=vocabularies, plain=plain, sample=sample, fit_args=fit_args,
                     callbacks=[streamed.FileValidation(sharded, evaluating, *mine)],
                     n_train=sizes["train"], final_metrics=final_metrics,
                     cleanup=lambda: shutil.rmtree(folder, ignore_errors=True))


def _shard_folder(config):
    """A new folder for shard files in ``streaming_dir`` (made if needed) or the temporary folder."""
    if config.streaming_dir:
        os.makedirs(config.streaming_dir, exist_ok=True)
    return tempfile.mkdtemp(prefix="tte-shards-", dir=config.streaming_dir)


def _worker_index(role):
    """This multi-worker process's input pipeline: the chief first, then the workers."""
    if role.task_type == "worker" and "chief" in role.cluster:
        return role.task_id + 1
    return role.task_id if role.task_type == "worker" else 0

