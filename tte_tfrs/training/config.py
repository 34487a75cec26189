"""Plain configuration objects of a training run, validated in one place.

`TrainConfig` is what users build (``TrainConfig(data_dir="archive.zip", epochs=10)``) and what the
manifest records, flat. It is made of four parts that functions can ask for by type: `DataConfig`
(which rows), `ModelConfig` (the towers' shape and J), `TrainerConfig` (optimisation) and
`ScaleConfig` (tf.distribute strategy, streaming). Every
part lists its own checks; `validate` runs all of them and raises a `ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from tte_tfrs.data.loader import DATASETS
from tte_tfrs.data.movielens import FOLDS
from tte_tfrs.errors import ConfigError, ExportError
from tte_tfrs.model.towers import REGULARIZATION_SCOPES

OPTIMIZERS = ("adam", "adagrad", "sgd", "rmsprop")
REGULARIZERS = ("l1", "l2")
STRATEGIES = ("none", "multi_worker", "parameter_server")
INPUT_MODES = ("auto", "memory", "streaming")

Check = tuple[str, bool, str]           # (field, holds, what is expected)


class ConfigBase:
    """A frozen config dataclass whose parts each list `_checks`; `validate` runs them all.

    A subclass defines ``_checks(self)`` yielding (field, holds, what is expected) and may map
    fields to their allowed values in ``choices`` (scripts turn those into enum flags).
    """

    choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):          # lists (from JSON or callers) -> tuples
            if isinstance(getattr(self, field.name), list):
                object.__setattr__(self, field.name, tuple(getattr(self, field.name)))
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError naming the first field of the wrong type or out of range.

        Raises:
          ConfigError: a value of the wrong type or out of range; its ``field`` attribute names
            the field.
        """
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = type_problem(value, hints[field.name])
            if expected:
                raise ConfigError(f"{field.name} must be {expected}, got {value!r}", field=field.name)
        for part in reversed(type(self).__mro__):
            checks = part.__dict__.get("_checks")
            if checks is None:
                continue
            for field, holds, expected in checks(self):
                if not holds:
                    raise ConfigError(f"{field} {expected}, got {getattr(self, field)!r}",
                                      field=field)

    def to_dict(self) -> dict[str, Any]:
        """Field values as JSON-ready Python values (tuples become lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], strict: bool = False):
        """Builds the config from a dict such as a manifest's ``config``.

        Args:
          values: field values; lists are accepted for tuple fields.
          strict: refuse keys that are not fields (otherwise they are ignored, so manifests written
            by other versions of the package still load).

        Raises:
          ConfigError: an unknown key (when strict) or a value out of range.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if strict and unknown:
            raise ConfigError(f"{', '.join(unknown)}: not a setting of {cls.__name__}",
                              field=unknown[0])
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], where: str):
        """The config an export's manifest records (its ``config`` object), validated.

        Raises:
          ExportError: a value of the wrong type or out of range, naming `where` (the manifest)
            and the key.
        """
        values = manifest.get("config")
        if not isinstance(values, Mapping):
            raise ExportError(f"{where}: 'config' must be a JSON object")
        try:
            return cls.from_dict(values)
        except ConfigError as exc:
            raise ExportError(f"{where}: damaged manifest: config.{exc}") from None

    def changed(self) -> str:
        """The fields that differ from their defaults, for messages."""
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                         if getattr(self, f.name) != f.default)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig(ConfigBase):
    """Which data, and how its ratings are split.

    Attributes:
      data_dir: folder, zip or gz holding the data; None means the embedded default data.
      dataset: data layout: auto (detect from file names), kaggle, bx or movielens.
      split: random (a seeded split of the ratings) or a MovieLens fold u1..u5, ua, ub, whose test
        file is the test set.
      validation_fraction: share of the ratings held out for early stopping (from the fold's base
        file when split is a fold).
      test_fraction: share of the ratings held out for the final metrics (random split only).
      include_implicit: also train and evaluate on implicit interactions (Book-Crossing rating 0)
        as ratings of 0; by default only explicit ratings are used.
      max_dropped_fraction: the largest share of any input file's rows that may be dropped as
        unusable (malformed, swallowed by a broken quote, out of scale, bad ids) before training
        refuses the data, naming the file and line; 1 trains on whatever is left.
    """

    data_dir: str | None = None
    dataset: str = "auto"
    split: str = "random"
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    include_implicit: bool = False
    max_dropped_fraction: float = 0.1

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"dataset": DATASETS}

    def _checks(self) -> Iterator[Check]:
        yield "dataset", self.dataset in DATASETS, f"must be one of {', '.join(DATASETS)}"
        yield "split", self.split == "random" or self.split in FOLDS, \
            "must be 'random' or a MovieLens fold " + ", ".join(FOLDS)
        yield "validation_fraction", 0 < self.validation_fraction < 0.5, "must be in (0, 0.5)"
        yield "test_fraction", 0 <= self.test_fraction < 0.5, "must be in [0, 0.5)"
        yield "test_fraction", self.validation_fraction + self.test_fraction < 0.9, \
            "plus validation_fraction must leave at least 10% of the ratings for training"
        yield "data_dir", self.data_dir is None or (isinstance(self.data_dir, str)
                                                    and self.data_dir.strip() != ""), \
            "must be a path (leave it out for the embedded data)"
        yield "max_dropped_fraction", finite_number(self.max_dropped_fraction, 0) and \
            self.max_dropped_fraction <= 1, "must be a number from 0 to 1"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(ConfigBase):
    """The towers' shape and the regularisation term J.

    Attributes:
      embedding_dim: latent dimension k. Exported embeddings have k + 2 dimensions: the user bias
        plus global mean and the item bias are folded in, so the dot product is the rating.
      hidden_units: sizes of optional ReLU layers on top of the feature embeddings, e.g. 64,32;
        empty means the features' embeddings are summed (a factorisation-machine-style tower).
      regularizer: J, the l1 or l2 norm, applied to every embedding table and kernel.
      regularization: gamma, the strength of J (0 disables it).
      regularization_scope: table: J of every embedding row every step (dense gradients, each step
        updates whole tables); batch: J of the rows each batch looks up, averaged over the batch,
        so frequent rows are regularised more and gradients stay sparse (a sparse optimizer such
        as Adagrad then touches only the rows a step uses).
      min_count: a category, text token or tag needs this many training rows to get its own
        embedding; rarer ones share the out-of-vocabulary slot. Ids always get their own row.
      max_text_tokens: the most frequent words kept for each text feature.
      user_history: give the user tower the user-history feature (SVD++'s implicit feedback): the
        items each user interacted with in the training rows (and the data's implicit
        interactions, e.g. Book-Crossing rating 0; never a validation or test pair), stored in
        the tower and looked up by user id, combined with weight 1/sqrt(n). Single-process,
        in-memory training only.
      item_history: give the item tower the mirror image, the item-history feature: the users
        who interacted with each item in the same training interactions, stored in the item
        tower and looked up by item id (its own table of users, weight 1/sqrt(n)). A new item
        is served from its other features. Single-process, in-memory training only. Train it
        with a smaller learning rate than the default (0.25 with Adagrad: popular items share
        most of their users, so their histories' rows all move together and 0.5 oscillates;
        BENCHMARKS.md).
      ensemble_members: M models trained at once in the same tables (each with its own
        initialisation and rating loss); the export folds them into one embedding per user and
        item (M * k + 2 dimensions) whose dot product is the mean of the M predicted ratings, so
        one index serves the ensemble. Each step costs about M times the embedding work. Not
        with hidden_units; single-process, in-memory training only.
      history_size: the most items kept per user for user_history, and users per item for
        item_history (a seeded sample above it).
      retrieval_weight: w of the joint objective: w times a tfrs Retrieval task (in-batch
        softmax over the batch's items, corrected by each item's share of the training rows) on
        the same dot product is added to the rating loss. Trades RMSE for top-K recall and
        catalogue coverage (README); 0 gives exactly the SRS rating loss. Single-process,
        in-memory training only.
      retrieval_temperature: tau of the joint objective: its logits are the dot products
        divided by tau (smaller: sharper, the top of each list weighs more).
      logq_strength: alpha of the joint objective's sampling correction: the logits are lowered
        by alpha times the log of each item's share of the training rows (1: the full logQ
        correction, 0: none, which leaves popular items less favoured).
    """

    embedding_dim: int = 16
    hidden_units: tuple[int, ...] = ()
    regularizer: str = "l2"
    regularization: float = 0.15
    regularization_scope: str = "batch"
    min_count: int = 2
    max_text_tokens: int = 20000
    user_history: bool = False
    item_history: bool = False
    history_size: int = 64
    ensemble_members: int = 1
    retrieval_weight: float = 0.0
    retrieval_temperature: float = 1.0
    logq_strength: float = 1.0

    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "regularizer": REGULARIZERS, "regularization_scope": REGULARIZATION_SCOPES}

    def _checks(self) -> Iterator[Check]:
        yield "embedding_dim", whole_number(self.embedding_dim, 1), "must be a whole number >= 1"
        yield "hidden_units", all(whole_number(h, 1) for h in self.hidden_units), \
            "must be positive layer sizes"
        yield "regularizer", self.regularizer in REGULARIZERS, "must be l1 or l2"
        yield "regularization", finite_number(self.regularization, 0), "must be a number >= 0"
        yield "regularization_scope", self.regularization_scope in REGULARIZATION_SCOPES, \
            "must be table or batch"
        yield "min_count", whole_number(self.min_count, 1), "must be a whole number >= 1"
        yield "max_text_tokens", whole_number(self.max_text_tokens, 1), "must be a whole number >= 1"
        yield "history_size", whole_number(self.history_size, 1), "must be a whole number >= 1"
        yield "ensemble_members", whole_number(self.ensemble_members, 1), \
            "must be a whole number >= 1"
        yield "ensemble_members", self.ensemble_members == 1 or not self.hidden_units, \
            "must be 1 with hidden_units (an ensemble folds summed towers only)"
        yield "retrieval_weight", finite_number(self.retrieval_weight, 0), "must be a number >= 0"
        yield "retrieval_temperature", finite_number(self.retrieval_temperature, 0) and \
            self.retrieval_temperature > 0, "must be a number > 0"
        yield "logq_strength", finite_number(self.logq_strength, 0) and \
            self.logq_strength <= 1, "must be a number from 0 to 1"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainerConfig(ConfigBase):
    """How the model is fitted.

    Attributes:
      epochs: upper bound on epochs; early stopping usually ends sooner.
      batch_size: examples per gradient step.
      learning_rate: optimizer step size.
      optimizer: adagrad, adam, sgd or rmsprop.
      early_stopping_patience: epochs without a better validation RMSE before stopping (the best
        weights are kept); 0 disables early stopping. The validation RMSE of a small data set
        (tens of steps per epoch) is noisy from epoch to epoch while it still falls slowly, so
        a short patience stops early by chance: 3 stopped MovieLens u1 after 12 to 16 epochs
        at 0.925-0.944 for four seeds, 8 after 78-99 epochs at 0.899-0.913 (BENCHMARKS.md).
      seed: seeds the split, initialisation and shuffling: same seed and data, same model.
      deterministic: ask TensorFlow for deterministic ops (tf.data order, no known
        nondeterministic kernel); same seed: same split, initialisation and batch order, weights
        equal to float rounding.
      log_dir: TensorBoard logs go here; None disables them. (What an update continues from is
        the export's checkpoint/<version>/, written by `tte_tfrs.export`.)
      verbose: progress output: 0 silent, 1 a progress bar, 2 one line per stage and per epoch.
      refit: after early stopping has chosen the number of epochs on the validation rows, train
        a fresh model on the training and validation rows together for that many epochs and
        export it (the peers that do not early-stop see those rows too). Reported validation
        metrics stay those of the first model, measured on rows it did not train on; the test
        metrics are the refitted model's. Costs a second training; in-memory single-process
        training with early stopping only.
      cross_fit: with ensemble_members M > 1, train on the validation rows too, each dealt (by
        seed) to one member that never trains on it: every member trains on the training rows
        and the other members' validation rows, and early stopping watches the RMSE of each
        validation row predicted by the member that did not see it (an honest estimate of one
        member, reported as validation_rmse; the exported mean of the members has seen every
        row). The ensemble so uses all the rows without a second training (refit); the user
        history still holds training pairs only.
      weight_average_decay: beta of the exponential moving average of the weights taken once per
        epoch (normalised: after t epochs, epoch i weighs beta**(t - i) / sum of those): the
        averaged weights are the ones validated, early-stopped on and exported, while training
        goes on from the raw ones. It averages the noise of the last epochs' steps away (as a
        Bayesian model averages its samples); about 1 / (1 - beta) epochs count. 0: the raw
        weights of the last epoch, no averaging. Data-dependent (BENCHMARKS.md): 0.9 helped
        MovieLens and the embedded data's cross-fitted ensembles, not Book-Crossing's, and
        cost its single model 0.3% (a prototype run). Two more host copies of the weights.
      tune_trials: tune the settings of `tte_tfrs.training.tuning.SPACE` (learning_rate,
        regularization, embedding_dim, user_history, item_history, weight_average_decay) on
        the validation rows with Optuna, trying at most this many settings (the first is the
        given one); the best is kept and the manifest records every trial. 0: no limit when
        tune_minutes is set, else no tuning.
      tune_minutes: tune (as tune_trials) until this many minutes have passed (no new trial
        starts after it); 0: no time limit.
    """

    epochs: int = 100
    batch_size: int = 1024
    learning_rate: float = 0.5
    optimizer: str = "adagrad"
    early_stopping_patience: int = 8
    seed: int = 42
    deterministic: bool = True
    log_dir: str | None = None
    verbose: int = 2
    refit: bool = False
    cross_fit: bool = False
    weight_average_decay: float = 0.0
    tune_trials: int = 0
    tune_minutes: float = 0.0

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"optimizer": OPTIMIZERS}

    def _checks(self) -> Iterator[Check]:
        yield "epochs", whole_number(self.epochs, 1), "must be a whole number >= 1"
        yield "batch_size", whole_number(self.batch_size, 1), "must be a whole number >= 1"
        yield "learning_rate", finite_number(self.learning_rate, 0) and self.learning_rate > 0, \
            "must be a finite number > 0"
        yield "optimizer", self.optimizer in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}"
        yield "early_stopping_patience", whole_number(self.early_stopping_patience, 0), \
            "must be a whole number >= 0"
        yield "seed", whole_number(self.seed, 0) and self.seed < 2 ** 31, \
            "must be a whole number from 0 to 2**31 - 1"
        yield "refit", not self.refit or self.early_stopping_patience > 0, \
            "needs early stopping (early_stopping_patience > 0) to choose the epochs"
        yield "cross_fit", not (self.cross_fit and self.refit), \
            "and refit both train on the validation rows; choose one"
        yield "weight_average_decay", finite_number(self.weight_average_decay, 0) and \
            self.weight_average_decay < 1, "must be a number from 0 to below 1"
        yield "tune_trials", whole_number(self.tune_trials, 0), "must be a whole number >= 0"
        yield "tune_minutes", finite_number(self.tune_minutes, 0), "must be a number >= 0"
        yield "verbose", self.verbose in (0, 1, 2) and not isinstance(self.verbose, bool), \
            "must be 0, 1 or 2"
        yield "log_dir", self.log_dir is None or (isinstance(self.log_dir, str)
                                                  and self.log_dir.strip() != ""), \
            "must be a folder path, or None for no logs"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScaleConfig(ConfigBase):
    """Where training runs and how data larger than memory is read (`tte_tfrs.training.scaled`).

    Attributes:
      strategy: none (one process), multi_worker (tf.distribute.MultiWorkerMirroredStrategy: every
        worker runs the same command with its TF_CONFIG, the chief exports) or parameter_server
        (tf.distribute.ParameterServerStrategy: TF_CONFIG names a chief, the coordinator that
        trains and exports, and worker and ps tasks that serve it).
      input_mode: memory (every table in memory), streaming (files read in chunks, rows written
        once to sharded TFRecord files that tf.data reads; Book-Crossing layouts) or auto
        (streaming when the ratings file is larger than streaming_threshold_mb).
      streaming_threshold_mb: ratings file size in MB (uncompressed; a .gz file's own size)
        above which auto streams.
      streaming_dir: where streaming writes its shards (a folder every worker can read for
        parameter_server); None means a temporary folder, removed after training.
      backup_dir: tf.keras.callbacks.BackupAndRestore folder: a restarted worker resumes from
        the last finished epoch; None disables it (tte-train defaults it to
        OUTPUT_DIR/.backup when a strategy is set).
      min_shard_bytes: parameter_server: embedding tables larger than this are split into up
        to one shard per parameter server (tf.distribute MinSizePartitioner).
    """

    strategy: str = "none"
    input_mode: str = "auto"
    streaming_threshold_mb: float = 256.0
    streaming_dir: str | None = None
    backup_dir: str | None = None
    min_shard_bytes: int = 256 << 10

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"strategy": STRATEGIES,
                                                     "input_mode": INPUT_MODES}

    def _checks(self) -> Iterator[Check]:
        yield "strategy", self.strategy in STRATEGIES, f"must be one of {', '.join(STRATEGIES)}"
        yield "input_mode", self.input_mode in INPUT_MODES, \
            f"must be one of {', '.join(INPUT_MODES)}"
        yield "streaming_threshold_mb", finite_number(self.streaming_threshold_mb, 0), \
            "must be a number >= 0"
        yield "min_shard_bytes", whole_number(self.min_shard_bytes, 1), \
            "must be a whole number >= 1"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(DataConfig, ModelConfig, TrainerConfig, ScaleConfig):
    """Everything that decides a training run: same config and data give the same model.

    The fields of `DataConfig`, `ModelConfig` and `TrainerConfig`, flat. The defaults were tuned on
    validation splits of MovieLens 100K (u1), Book-Crossing explicit ratings and the embedded data
    (BENCHMARKS.md): Adagrad with a large step and batch-scoped L2 keeps every update sparse (a
    step touches only the rows it uses), which is both the fastest and, on all three data sets,
    the most accurate setting measured.
    """

    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        **DataConfig.choices, **ModelConfig.choices, **TrainerConfig.choices, **ScaleConfig.choices}

    def _checks(self) -> Iterator[Check]:
        yield "cross_fit", not self.cross_fit or self.ensemble_members > 1, \
            "needs ensemble_members > 1 (each member leaves out its own share of the " \
            "validation rows)"


def field_help(config_class: type) -> dict[str, str]:
    """{field: its description} from the ``Attributes:`` sections of the class and its parts."""
    found: dict[str, str] = {}
    for part in reversed(config_class.__mro__):
        doc = part.__dict__.get("__doc__") or ""
        section = doc.partition("Attributes:")[2]
        for match in re.finditer(r"^\s{2,}(\w+): (.*?)(?=^\s{2,}\w+: |\Z)", section,
                                 flags=re.M | re.S):
            found[match.group(1)] = " ".join(match.group(2).split())
    return found


def type_problem(value: Any, hint: Any) -> str | None:
    """What `value` should be (``"a whole number"``, ...) when it does not fit the type `hint` of
    a config field, else None. Accepts ints where floats are expected; never bools for numbers."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, tuple) or any(type_problem(v, args[0]) for v in value):
            return f"a list of {_TYPE_NAMES.get(args[0], args[0].__name__)}s"
        return None
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    return None


_TYPE_NAMES = {int: "whole number", float: "number", str: "string"}


def whole_number(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def finite_number(value: Any, low: float = float("-inf")) -> bool:
    """Whether `value` is a finite int or float (not a bool) of at least `low`."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= low)
