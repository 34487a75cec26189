"""Plain configuration objects; validated in one place."""

import dataclasses

from tte_tfrs.errors import ConfigError

OPTIMIZERS = ("adam", "adagrad", "sgd", "rmsprop")
REGULARIZERS = ("l1", "l2")
REGULARIZATION_SCOPES = ("table", "batch")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; same config and data give the same model.

    The defaults were tuned on validation splits of MovieLens 100K (u1), Book-Crossing explicit
    ratings and the embedded data (BENCHMARKS.md, "Tuning"): Adagrad with a large step and
    batch-scoped L2 keeps every update sparse (a step touches only the rows it uses), which is both
    the fastest and, on all three data sets, the most accurate setting we measured.

    Attributes:
      data_dir: folder or zip holding the data; None means the embedded default data.
      dataset: ``auto``, ``kaggle``, ``bx`` or ``movielens`` (see `tte_tfrs.load_dataset`).
      split: ``random`` (a seeded split of the ratings) or a predefined MovieLens fold (``u1``..``u5``,
        ``ua``, ``ub``), whose test file is the test set.
      validation_fraction: share of the ratings held out for early stopping (from the fold's base
        file when `split` is a fold).
      test_fraction: share of the ratings held out for the final metrics (random split only).
      include_implicit: train and evaluate on implicit interactions (Book-Crossing rating 0) as
        ratings of 0 too; by default only explicit ratings are used.
      embedding_dim: latent dimension k. The exported embeddings have k + 2 dimensions: the user
        bias plus global mean and the item bias are folded in, so the dot product is the rating.
      hidden_units: sizes of optional ReLU layers on top of the feature embeddings; empty means the
        embeddings of the features are summed (a factorisation machine-style tower).
      epochs: upper bound on epochs; early stopping usually ends sooner.
      batch_size: examples per gradient step.
      learning_rate: optimizer step size.
      optimizer: one of `OPTIMIZERS`.
      regularizer: ``l1`` or ``l2``: J in the loss, applied to every embedding table and kernel.
      regularization: gamma, the strength of J (0 disables it).
      regularization_scope: ``table``: J of every embedding row, every step (dense gradients: each
        step updates whole tables); ``batch``: J of the rows each batch looks up, averaged over the
        batch, so frequent rows are regularised more and gradients stay sparse (with a sparse
        optimizer such as Adagrad a step touches only the rows it uses).
      min_count: a category, text token or tag needs this many training rows to get its own
        embedding; rarer ones share the out-of-vocabulary slot. Ids always get their own row.
      max_text_tokens: the most frequent words kept for text features.
      early_stopping_patience: epochs without a better validation RMSE before stopping; 0 disables.
      seed: seeds the split, initialisation and shuffling.
      deterministic: ask TensorFlow for deterministic ops (same seed, bit-identical model).
      log_dir: TensorBoard logs and checkpoints go here; None disables both.
      verbose: Keras progress output: 0 silent, 1 bar, 2 one line per epoch.
    """

    data_dir: str | None = None
    dataset: str = "auto"
    split: str = "random"
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    include_implicit: bool = False
    embedding_dim: int = 16
    hidden_units: tuple = ()
    epochs: int = 100
    batch_size: int = 1024
    learning_rate: float = 0.5
    optimizer: str = "adagrad"
    regularizer: str = "l2"
    regularization: float = 0.15
    regularization_scope: str = "batch"
    min_count: int = 2
    max_text_tokens: int = 20000
    early_stopping_patience: int = 3
    seed: int = 42
    deterministic: bool = True
    log_dir: str | None = None
    verbose: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raises ConfigError naming the first field that is out of range."""
        checks = [
            (self.embedding_dim >= 1, "embedding_dim must be at least 1"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.regularizer in REGULARIZERS, "regularizer must be l1 or l2"),
            (self.regularization >= 0, "regularization (gamma) must be zero or positive"),
            (self.regularization_scope in REGULARIZATION_SCOPES,
             "regularization_scope must be table or batch"),
            (0 < self.validation_fraction < 0.5, "validation_fraction must be in (0, 0.5)"),
            (0 <= self.test_fraction < 0.5, "test_fraction must be in [0, 0.5)"),
            (self.validation_fraction + self.test_fraction < 0.9,
             "validation_fraction + test_fraction leaves too little training data"),
            (self.min_count >= 1, "min_count must be at least 1"),
            (self.max_text_tokens >= 1, "max_text_tokens must be at least 1"),
            (self.early_stopping_patience >= 0, "early_stopping_patience must be zero or positive"),
            (all(int(h) >= 1 for h in self.hidden_units), "hidden_units must be positive sizes"),
            (self.split == "random" or self.split in ("u1", "u2", "u3", "u4", "u5", "ua", "ub"),
             "split must be 'random' or a MovieLens fold u1..u5, ua, ub"),
            (self.verbose in (0, 1, 2), "verbose must be 0, 1 or 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{message} (config: {self._short()})")

    def _short(self):
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                         if getattr(self, f.name) != f.default)

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["hidden_units"] = list(self.hidden_units)
        return out
