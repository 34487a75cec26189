"""Training: data set -> splits -> vocabularies -> towers -> fitted model -> test metrics.

May import: tte_tfrs.data, tte_tfrs.model, tte_tfrs.evaluation.metrics, tte_tfrs.training.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from tte_tfrs import paths
from tte_tfrs.data.cleaning import check_dropped_share
from tte_tfrs.data.dataset import Dataset, join_features
from tte_tfrs.data.loader import load_dataset
from tte_tfrs.data.split import Splits, split_ratings
from tte_tfrs.data.tfdata import make_tf_dataset, make_training_dataset
from tte_tfrs.errors import ConfigError
from tte_tfrs.evaluation import metrics
from tte_tfrs.model.history import HISTORY, ITEM_HISTORY, Histories, item_histories, user_histories
from tte_tfrs.model.towers import ITEM, USER, Tower, make_regularizer
from tte_tfrs.model.two_tower import HOLDOUT, NON_FINITE_LOSS, RATING, TwoTowerRatingModel
from tte_tfrs.model.vocabulary import build_vocabularies
from tte_tfrs.training import checkpoint
from tte_tfrs.training.config import TrainConfig

PREDICT_BATCH = 8192
# Training steps per call of the compiled step function: the same steps, fewer trips through
# Keras' Python loop (a quarter of a default step's time with full feature towers).
STEPS_PER_EXECUTION = 8


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
      model: the fitted `TwoTowerRatingModel` (best validation weights when early stopping ran).
      config: the `TrainConfig` used.
      dataset: the `Dataset` trained on.
      splits: the `Splits` used.
      metrics: ``test_rmse``, ``test_mae``, ``baseline_rmse`` and ``baseline_mae`` (global mean of
        the training ratings), ``validation_rmse`` (with ``cross_fit``: each validation row
        scored by the member that never learnt from it), ``epochs_run``, ``train_seconds`` and
        ``train_examples_per_second``.
      history: Keras history (per-epoch loss, rmse, val_rmse, ...).
      parent: for a warm start, the `tte_tfrs.training.warm_start.Parent` export it continued from (its
        catalogue, users and interactions are kept in the new export); None otherwise.
      update: for a warm start, what the manifest records about it (parent version, data added,
        vocabulary growth, metrics before and after); None otherwise.
      tuning: with ``tune_trials`` / ``tune_minutes``, what the manifest records about the
        search (`tte_tfrs.training.tuning`); None otherwise.
    """

    model: TwoTowerRatingModel
    config: TrainConfig
    dataset: Dataset
    splits: Splits
    metrics: dict
    history: dict
    parent: Any = None          # tte_tfrs.training.warm_start.Parent
    update: dict | None = None
    tuning: dict | None = None


def build_model(config: TrainConfig, dataset: Dataset, train_columns: dict, global_mean: float,
                vocabularies: dict | None = None,
                histories: Mapping[str, Histories] | None = None) -> TwoTowerRatingModel:
    """Builds (untrained) towers and model for `dataset`.

    Vocabularies come from the training rows unless given (a warm start passes grown ones).
    `histories` ({`HISTORY` or `ITEM_HISTORY`: `Histories`}, from `histories_for`) must hold
    each history feature the config asks for.

    Raises:
      ConfigError: ``user_history`` or ``item_history`` without its histories, or
        ``retrieval_weight`` without training rows (the items' sampling probabilities come
        from them).
    """
    if vocabularies is None:
        vocabularies = build_vocabularies(dataset.user_features + dataset.item_features,
                                          train_columns, config.min_count, config.max_text_tokens)
    histories = dict(histories or {})
    for field, feature in (("user_history", HISTORY), ("item_history", ITEM_HISTORY)):
        if getattr(config, field) and feature not in histories:
            raise ConfigError(f"{field} needs the training interactions; this training path has "
                              f"none: set {field}=False (--no{field})", field=field)
    regularizer = make_regularizer(config.regularizer, config.regularization)
    # Vocabularies in files (SavedModel assets) unless a strategy's workers build the towers.
    common = dict(seed=config.seed, regularization_scope=config.regularization_scope,
                  members=config.ensemble_members,
                  vocabulary_files=not tf.distribute.has_strategy())
    user_tower = Tower(dataset.user_features, vocabularies, config.embedding_dim, USER, regularizer,
                       config.hidden_units, global_mean=global_mean,
                       histories=histories.get(HISTORY) if config.user_history else None,
                       **common)
    item_tower = Tower(dataset.item_features, vocabularies, config.embedding_dim, ITEM, regularizer,
                       config.hidden_units,
                       histories=histories.get(ITEM_HISTORY) if config.item_history else None,
                       **common)
    probabilities = None
    if config.retrieval_weight:
        name = dataset.item_features[0].name
        if name not in train_columns:
            raise ConfigError("retrieval_weight needs the training rows in memory; set it to 0 "
                              "(--retrieval_weight=0) for this training path",
                              field="retrieval_weight")
        probabilities = item_probabilities(vocabularies.get(name, []), train_columns[name])
    return TwoTowerRatingModel(user_tower, item_tower, config.retrieval_weight, probabilities,
                               config.retrieval_temperature, config.logq_strength)


def item_probabilities(vocabulary, item_ids) -> np.ndarray:
    """Each item-id row's share of the training rows (row 0: the unknown slot, given the
    smallest share so that its log stays finite)."""
    position = pd.Series(np.arange(1, len(vocabulary) + 1), index=pd.Index(list(vocabulary)))
    rows = pd.Series(np.asarray(item_ids).astype(str)).map(position).fillna(0).to_numpy(np.int64)
    counts = np.bincount(rows, minlength=len(vocabulary) + 1).astype(np.float64)
    counts[counts == 0] = 1.0
    return (counts / max(len(rows), 1)).astype(np.float32)


def history_pairs(dataset: Dataset, splits: Splits, extra: pd.DataFrame | None = None
                  ) -> pd.DataFrame:
    """The (user_id, item_id) interactions the user-history feature may use: every interaction of
    `dataset` (explicit and implicit) and `extra` (a warm start's parent interactions), less the
    validation and test pairs."""
    frames = [dataset.ratings[["user_id", "item_id"]]]
    if extra is not None:
        frames.append(extra[["user_id", "item_id"]])
    pairs = pd.concat(frames, ignore_index=True).astype(str).drop_duplicates()
    held = pd.concat([splits.validation[["user_id", "item_id"]],
                      splits.test[["user_id", "item_id"]]], ignore_index=True).astype(str)
    held_out = pd.MultiIndex.from_frame(held)
    return pairs[~pd.MultiIndex.from_frame(pairs).isin(held_out)].reset_index(drop=True)


def histories_for(config: TrainConfig, dataset: Dataset, splits: Splits,
                  extra: pd.DataFrame | None = None,
                  vocabularies: Mapping[str, Sequence[str]] | None = None,
                  pairs: pd.DataFrame | None = None) -> dict[str, Histories]:
    """The `Histories` of a run's history features, {`HISTORY`: each user's items,
    `ITEM_HISTORY`: each item's users}, holding those that ``user_history`` and
    ``item_history`` ask for, from `history_pairs` (`extra`: a warm start's parent interactions;
    `vocabularies`: its grown history vocabularies, by feature; `pairs`: `history_pairs`'
    result where the caller already has it)."""
    wanted = [(feature, build) for field, feature, build in (
        ("user_history", HISTORY, user_histories), ("item_history", ITEM_HISTORY, item_histories))
        if getattr(config, field)]
    if not wanted:
        return {}
    if pairs is None:
        pairs = history_pairs(dataset, splits, extra)
    vocabularies = vocabularies or {}
    return {feature: build(pairs, config.history_size, config.seed, vocabularies.get(feature))
            for feature, build in wanted}


class EpochTimer(tf.keras.callbacks.Callback):
    """Records each epoch's wall-clock seconds spent on training steps, from the end of every
    callback's ``on_epoch_begin`` (`start`, placed last among a fit's callbacks, so the work of
    others, such as restoring the raw weights after a weight average, is excluded) to Keras'
    validation pass or the epoch's end (the validation pass is excluded too). It uses epoch
    hooks only: ``ParameterServerStrategy`` refuses batch-level callbacks."""

    def __init__(self):
        super().__init__()
        self.seconds = []
        self._started = self._stopped = None
        self.start = _EpochStart(self)

    epoch = 0          # the epoch running (1-based), for messages

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1
        # The start when `start` is not among the callbacks.
        self._started, self._stopped = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self._started is not None and self._stopped is None:
            self._stopped = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append((self._stopped or time.perf_counter()) - self._started)


class _EpochStart(tf.keras.callbacks.Callback):
    """The training steps' start for `EpochTimer`: the last callback's ``on_epoch_begin``."""

    def __init__(self, timer: EpochTimer):
        super().__init__()
        self.timer = timer

    def on_epoch_begin(self, epoch, logs=None):
        self.timer._started = time.perf_counter()


class BestEpoch(tf.keras.callbacks.Callback):
    """Keeps the state of the epoch with the lowest validation RMSE, weights and optimizer state
    (Adagrad's accumulators, ...) together, and restores both when training ends, so the
    checkpoint a warm start continues from belongs to the weights exported."""

    def __init__(self):
        super().__init__()
        self.best = self.best_epoch = self.state = None
        self.last_epoch = -1

    def _variables(self):
        return list(self.model.weights) + list(self.model.optimizer.variables)

    def on_epoch_end(self, epoch, logs=None):
        self.last_epoch = epoch
        value = (logs or {}).get("val_rmse")
        if value is not None and np.isfinite(value) and (self.best is None or value < self.best):
            self.best, self.best_epoch = float(value), epoch
            self.state = [v.numpy() for v in self._variables()]

    def on_train_end(self, logs=None):
        if self.state is not None and self.best_epoch != self.last_epoch:
            for variable, value in zip(self._variables(), self.state):
                variable.assign(value)


class WeightAverage(tf.keras.callbacks.Callback):
    """``weight_average_decay``: after each epoch's training steps the model's trainable weights
    are replaced by their normalised exponential moving average over the epochs so far (epoch i
    of t weighs beta**(t - i), the weights sum to 1), so validation, early stopping (and
    `BestEpoch`'s copy) and the export see averaged weights; the next epoch trains on from the
    raw ones. The swap happens when Keras' validation pass begins, or at the epoch's end when
    there is none (validation by a callback placed after this one)."""

    def __init__(self, decay: float):
        super().__init__()
        self.decay = decay
        self.sums = None            # sum over epochs i of decay**(t - i) * weights_i
        self.norm = 0.0             # sum over epochs i of decay**(t - i)
        self.raw = None             # the raw weights while the averaged ones are in the model

    def _variables(self):
        return list(self.model.trainable_weights)

    def _swap_in_average(self):
        if self.raw is not None:
            return
        self.raw = [v.numpy() for v in self._variables()]
        if self.sums is None:
            self.sums = [np.array(r) for r in self.raw]
        else:
            for total, raw in zip(self.sums, self.raw):
                total *= self.decay
                total += raw
        self.norm = self.norm * self.decay + 1.0
        for variable, total in zip(self._variables(), self.sums):
            variable.assign(total / np.float32(self.norm))

    def on_test_begin(self, logs=None):
        self._swap_in_average()

    def on_epoch_end(self, epoch, logs=None):
        self._swap_in_average()

    def on_epoch_begin(self, epoch, logs=None):
        if self.raw is not None:
            for variable, raw in zip(self._variables(), self.raw):
                variable.assign(raw)
            self.raw = None


DIVERGED = "training diverged"


def diverged(config: TrainConfig, where: str) -> ConfigError:
    """The error for a run whose loss or weights became NaN or infinite."""
    return ConfigError(
        f"{DIVERGED}: {where} became NaN or infinite (learning_rate={config.learning_rate:g}"
        f", optimizer={config.optimizer}); nothing was exported. Lower learning_rate "
        "(--learning_rate) or check that the ratings are on their usual scale",
        field="learning_rate")


def is_divergence(error: ConfigError) -> bool:
    """Whether `error` is the `diverged` error (a setting that trains to NaN or infinity)."""
    return error.field == "learning_rate" and str(error).startswith(DIVERGED)


def check_finite(model: TwoTowerRatingModel, config: TrainConfig) -> None:
    """Raises the `diverged` error when any weight of `model` is NaN or infinite."""
    for variable in model.weights:
        if variable.dtype.is_floating and not np.isfinite(variable.numpy()).all():
            raise diverged(config, f"weight {variable.name}")


def make_optimizer(config: TrainConfig) -> tf.keras.optimizers.Optimizer:
    optimizers = {"adam": tf.keras.optimizers.Adam, "adagrad": tf.keras.optimizers.Adagrad,
                  "sgd": tf.keras.optimizers.SGD, "rmsprop": tf.keras.optimizers.RMSprop}
    return optimizers[config.optimizer](learning_rate=config.learning_rate)


def predict(model: TwoTowerRatingModel, columns: dict, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Predicted ratings (numpy float32) for a dict of feature columns (``rating`` is ignored)."""
    features = {k: v for k, v in columns.items() if k not in (RATING, HOLDOUT)}
    if not len(next(iter(features.values()))):
        return np.zeros(0, np.float32)
    return np.concatenate([model(batch).numpy() for batch in make_tf_dataset(features, batch_size)])


def rmse_mae(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    return metrics.rmse(truth, predicted), metrics.mae(truth, predicted)


def seed_process(config: TrainConfig) -> None:
    """Validates `config` and seeds TensorFlow (deterministic ops when asked)."""
    config.validate()
    tf.keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


def start(config: TrainConfig, dataset: Dataset | None = None) -> tuple[Dataset, Splits, dict, dict]:
    """Seeds TensorFlow, loads the data if needed and splits it.

    Everything that can be checked before training is: the config, the log folder (created and
    written to), the data, and the share of rows the readers dropped
    (``config.max_dropped_fraction``).

    Returns:
      (dataset, splits, train_columns, validation_columns).

    Raises:
      ConfigError: a bad setting or an unwritable log folder. DataError: unusable data.
    """
    seed_process(config)
    if config.log_dir:
        paths.writable_folder(config.log_dir, "log_dir")
    if dataset is None:
        if config.verbose:
            print(f"Reading {config.data_dir or 'the embedded data'} ...", flush=True)
        dataset = load_dataset(config.data_dir, config.dataset)
    check_dropped_share(dataset.report, config.max_dropped_fraction)
    splits = split_ratings(dataset, config.split, config.validation_fraction, config.test_fraction,
                           config.include_implicit, config.seed)
    if config.verbose:
        sizes = splits.sizes()
        print(f"Preparing {sizes['train']:,} training, {sizes['validation']:,} validation and "
              f"{sizes['test']:,} test ratings of {dataset.name} ...", flush=True)
    return (dataset, splits, join_features(splits.train, dataset),
            join_features(splits.validation, dataset))


def fit(model: TwoTowerRatingModel, config: TrainConfig, train_columns: dict,
        validation_columns: dict, optimizer_state: dict | None = None) -> tuple[dict, dict]:
    """Compiles `model` and fits it, early-stopping on validation RMSE.

    `optimizer_state` (Adagrad accumulators from `tte_tfrs.checkpoint`) continues the optimizer of
    an earlier run; without it the optimizer starts afresh.

    Returns:
      (Keras history dict, metrics dict with epochs_run, train_seconds (preprocessing included),
      train_examples_per_second (all epochs over train_seconds) and epoch_examples_per_second
      (training rows over the median time of the training steps of an epoch, validation pass
      excluded, over the epochs after the first, which also traces the step function)).
    """
    model.compile(optimizer=make_optimizer(config), steps_per_execution=STEPS_PER_EXECUTION)
    if optimizer_state:
        checkpoint.restore_optimizer(model, optimizer_state)
    timer, callbacks = make_callbacks(config)

    started = time.perf_counter()
    train_data = make_training_dataset(model.preprocess, train_columns, config.batch_size,
                                       shuffle=True, seed=config.seed)
    validation_data = make_training_dataset(model.preprocess, validation_columns, PREDICT_BATCH)
    try:
        history = model.fit(train_data, validation_data=validation_data, epochs=config.epochs,
                            callbacks=callbacks, verbose=config.verbose)
    except tf.errors.InvalidArgumentError as exc:
        if NON_FINITE_LOSS not in str(exc):
            raise
        raise diverged(config, f"the loss in epoch {timer.epoch}") from None
    check_finite(model, config)
    return fit_summary(history.history, timer, len(train_columns[RATING]),
                       time.perf_counter() - started)


def make_callbacks(config: TrainConfig, validation: Sequence[tf.keras.callbacks.Callback] = (),
                   others: Sequence[tf.keras.callbacks.Callback] = ()
                   ) -> tuple[EpochTimer, list]:
    """(the epoch timer, every callback of a fit), in the order they must run: the timer
    (validation is not training time), the weight average (with ``weight_average_decay``), the
    `validation` callbacks of a fit that validates in a callback instead of Keras' validation
    pass (they see the averaged weights), early stopping on validation RMSE (the best epoch's
    weights and optimizer state kept), with ``log_dir`` TensorBoard logs, `others` (a
    distributed run's backups) and last the timer's start (the others' epoch-begin work is
    not training time)."""
    timer = EpochTimer()
    callbacks = [timer]
    if config.weight_average_decay:
        callbacks.append(WeightAverage(config.weight_average_decay))
    callbacks.extend(validation)
    if config.early_stopping_patience:
        callbacks.append(tf.keras.callbacks.EarlyStopping(
            monitor="val_rmse", mode="min", patience=config.early_stopping_patience))
        callbacks.append(BestEpoch())
    if config.log_dir:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=config.log_dir))
    callbacks.extend(others)
    callbacks.append(timer.start)
    return timer, callbacks


def fit_summary(history: dict, timer: EpochTimer, examples: int,
                train_seconds: float) -> tuple[dict, dict]:
    """(history as plain floats, the fit metrics `fit` documents) of a finished Keras fit."""
    epochs_run = len(history.get("loss", []))
    # The first epoch also traces the step function; later ones show the steady training rate.
    steady = float(np.median(timer.seconds[1:] or timer.seconds or [train_seconds]))
    fit_metrics = {"epochs_run": epochs_run, "train_seconds": round(train_seconds, 3),
                   "train_examples_per_second": round(epochs_run * examples / train_seconds),
                   "epoch_examples_per_second": round(examples / steady)}
    return {k: [float(x) for x in v] for k, v in history.items()}, fit_metrics


def evaluate_splits(model: TwoTowerRatingModel, dataset: Dataset, splits: Splits,
                    validation_columns: dict, global_mean: float,
                    test_columns: dict | None = None) -> dict[str, float]:
    """Validation and (when there is a test split) test RMSE/MAE, with the global-mean baseline.

    `test_columns` are the joined test rows when the caller has them already.
    """
    out = {}
    out["validation_rmse"], out["validation_mae"] = rmse_mae(
        validation_columns[RATING], predict(model, validation_columns))
    out.update(score_test_rows(model, dataset, splits, global_mean, test_columns))
    return out


def score_test_rows(model: TwoTowerRatingModel, dataset: Dataset, splits: Splits, global_mean: float,
                 test_columns: dict | None = None) -> dict[str, float]:
    """Test RMSE/MAE and the global-mean baseline's ({} without a test split)."""
    if not len(splits.test):
        return {}
    if test_columns is None:
        test_columns = join_features(splits.test, dataset)
    out = {}
    out["test_rmse"], out["test_mae"] = rmse_mae(test_columns[RATING], predict(model, test_columns))
    out["baseline_rmse"], out["baseline_mae"] = rmse_mae(
        test_columns[RATING], np.full(len(splits.test), global_mean))
    return out


def training_and_validation(train_columns: dict, validation_columns: dict) -> dict:
    """The training rows followed by the validation rows, column by column."""
    return {name: np.concatenate([train_columns[name], validation_columns[name]])
            for name in train_columns}


def refit(config: TrainConfig, dataset: Dataset, splits: Splits, train_columns: dict,
          validation_columns: dict, history: dict) -> tuple[TwoTowerRatingModel, dict]:
    """``config.refit``: a fresh model trained on the training and validation rows together for
    the number of epochs early stopping chose (the epoch of the lowest validation RMSE).

    Returns:
      (the refitted model, metrics: ``refit_epochs``, ``refit_rows``, ``refit_seconds`` and the
      refitted model's test RMSE/MAE and baseline, which replace the first model's).
    """
    epochs = int(np.argmin(history["val_rmse"])) + 1
    both = training_and_validation(train_columns, validation_columns)
    global_mean = float(np.mean(both[RATING]))
    refit_config = dataclasses.replace(config, epochs=epochs, early_stopping_patience=0,
                                       refit=False)
    if config.verbose:
        print(f"Refitting on {len(both[RATING]):,} training and validation ratings for {epochs} "
              f"epochs ...", flush=True)
    model = build_model(refit_config, dataset, both, global_mean,
                        histories=histories_for(config, dataset, splits))
    _, fit_metrics = fit(model, refit_config, both, validation_columns)
    out = {"refit_epochs": epochs, "refit_rows": len(both[RATING]),
           "refit_seconds": fit_metrics["train_seconds"]}
    out.update(score_test_rows(model, dataset, splits, global_mean))
    return model, out


def cross_fit_columns(config: TrainConfig, train_columns: dict, validation_columns: dict
                      ) -> tuple[dict, dict]:
    """``config.cross_fit``: (the training and validation rows together, the validation rows),
    each with a ``HOLDOUT`` column: the member that must not learn from the row (validation rows
    dealt round the M members in a seeded order; -1 for training rows, which every member
    learns from)."""
    members = config.ensemble_members
    order = np.random.default_rng(config.seed).permutation(len(validation_columns[RATING]))
    holdout = np.empty(len(order), np.int64)
    holdout[order] = np.arange(len(order)) % members
    both = training_and_validation(train_columns, validation_columns)
    both[HOLDOUT] = np.concatenate([np.full(len(train_columns[RATING]), -1, np.int64), holdout])
    return both, {**validation_columns, HOLDOUT: holdout}


def cross_fit_validation(config: TrainConfig, history: dict) -> dict[str, float]:
    """Validation RMSE/MAE of a cross-fitted run: each validation row scored by the member that
    never learnt from it, at the epoch whose weights were kept (Keras' validation metrics, which
    accumulate over every row)."""
    epoch = int(np.argmin(history["val_rmse"])) if config.early_stopping_patience else -1
    return {"validation_rmse": history["val_rmse"][epoch],
            "validation_mae": history["val_mae"][epoch]}


def train(config: TrainConfig | None = None, dataset: Dataset | None = None) -> TrainResult:
    """Trains the two-tower rating model and measures it on the test split.

    Args:
      config: a `TrainConfig`; None means the defaults (the embedded data).
      dataset: an already loaded `Dataset`; None loads ``config.data_dir``.

    Returns:
      A `TrainResult`.

    Raises:
      DataError: the data cannot be read. ConfigError: the config does not fit the data.
    """
    config = config if config is not None else TrainConfig()
    from tte_tfrs.training import scaled  # a strategy or streamed data: scaled.train
    if scaled.uses_scaled_path(config, dataset):
        return scaled.train(config, dataset)
    if config.tune_trials or config.tune_minutes:
        from tte_tfrs.training import tuning
        return tuning.tune(config, dataset)
    dataset, splits, train_columns, validation_columns = start(config, dataset)
    if config.cross_fit:
        train_columns, validation_columns = cross_fit_columns(config, train_columns,
                                                              validation_columns)
    global_mean = float(np.mean(train_columns[RATING]))
    model = build_model(config, dataset, train_columns, global_mean,
                        histories=histories_for(config, dataset, splits))
    history, metrics = fit(model, config, train_columns, validation_columns)
    metrics.update(evaluate_splits(model, dataset, splits, validation_columns, global_mean))
    if config.cross_fit:
        metrics.update(cross_fit_validation(config, history))
    if config.refit:
        model, refit_metrics = refit(config, dataset, splits, train_columns, validation_columns,
                                     history)
        metrics.update(refit_metrics)
    if not all(np.isfinite(v) for v in metrics.values()):
        raise diverged(config, "the test metrics")
    return TrainResult(model=model, config=config, dataset=dataset, splits=splits, metrics=metrics,
                       history=history)
