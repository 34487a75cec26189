"""tte-train: train the two-tower rating model and export it for TF Serving.

Example:
  tte-train                                   # embedded data -> saved_models/
  tte-train --data_dir=~/Downloads/archive.zip --epochs=20
  tte-train --data_dir=ml-100k --dataset=movielens --split=u1
  tte-train --warm_start_from=saved_models --data_dir=new_ratings/   # next version, updated
"""

import os
import sys

from absl import app, flags

from tte_tfrs import lifecycle
from tte_tfrs.config import OPTIMIZERS, REGULARIZATION_SCOPES, REGULARIZERS, TrainConfig
from tte_tfrs.errors import TteError
from tte_tfrs.layout import ROLLED_BACK
from tte_tfrs.pipeline import train_and_export, update_and_export
from tte_tfrs.scripts import shared_flags  # shared flags --output_dir, --data_dir, --dataset and start()

_DEFAULTS = TrainConfig()

flags.DEFINE_string("split", _DEFAULTS.split, "'random' or a MovieLens fold u1..u5, ua, ub.")
flags.DEFINE_integer("embedding_dim", _DEFAULTS.embedding_dim, "Latent dimension k.")
flags.DEFINE_list("hidden_units", list(map(str, _DEFAULTS.hidden_units)),
                  "Optional ReLU layer sizes per tower, e.g. 64,32.")
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Maximum epochs (early stopping may end sooner).")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Mini-batch size.")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Learning rate.")
flags.DEFINE_enum("optimizer", _DEFAULTS.optimizer, OPTIMIZERS, "Optimizer.")
flags.DEFINE_enum("regularizer", _DEFAULTS.regularizer, REGULARIZERS, "J: l1 or l2 norm.")
flags.DEFINE_float("regularization", _DEFAULTS.regularization, "gamma, the strength of J.")
flags.DEFINE_enum("regularization_scope", _DEFAULTS.regularization_scope, REGULARIZATION_SCOPES,
                  "J on the embedding rows each batch uses (batch: sparse, fast updates) or on "
                  "every row of every table each step (table).")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed for split, initialisation and shuffling.")
flags.DEFINE_float("validation_fraction", _DEFAULTS.validation_fraction, "Validation share.")
flags.DEFINE_float("test_fraction", _DEFAULTS.test_fraction, "Test share (random split).")
flags.DEFINE_integer("early_stopping_patience", _DEFAULTS.early_stopping_patience,
                     "Epochs without better validation RMSE before stopping; 0 disables.")
flags.DEFINE_bool("include_implicit", False,
                  "Also train on implicit interactions (Book-Crossing rating 0) as ratings of 0.")
flags.DEFINE_string("tensorboard_dir", None,
                    "TensorBoard logs and checkpoints; default OUTPUT_DIR/logs.")
flags.DEFINE_integer("verbose", 2, "Keras progress: 0 silent, 1 bar, 2 a line per epoch.")
flags.DEFINE_string("rollback", None,
                    "Instead of training, make the previous version of this export folder current "
                    "again (the current one is moved to .rolled_back/).")
flags.DEFINE_string("warm_start_from", None,
                    "Continue the current version of this export folder on new data (--data_dir, or "
                    "the parent's own data when left out) and write the next version there. Flags "
                    "given on the command line override the parent's settings; embedding_dim, "
                    "hidden_units, regularizer, min_count stay the parent's.")
flags.DEFINE_bool("allow_invalid_ratings", False,
                  "With --warm_start_from: drop ratings outside the scale instead of refusing the "
                  "new data.")
flags.DEFINE_integer("keep_versions", 0,
                     "After exporting, delete all but the newest N versions (0 keeps all); the "
                     "current version is never deleted.")

FLAGS = flags.FLAGS


def main(argv):
    shared_flags.start(argv)
    if FLAGS.rollback:
        try:
            rolled_back, current = lifecycle.rollback(FLAGS.rollback)
        except (TteError, OSError) as exc:
            print(f"tte-train: error: {exc}", file=sys.stderr)
            return 2
        print(f"Rolled back {FLAGS.rollback}: version {current} is current again; version "
              f"{rolled_back} was moved to {os.path.join(FLAGS.rollback, ROLLED_BACK)}")
        return 0
    try:
        if FLAGS.warm_start_from:
            _update()
        else:
            _train()
        if FLAGS.keep_versions:
            removed = lifecycle.prune(FLAGS.output_dir, FLAGS.keep_versions)
            if removed:
                print(f"Pruned versions {', '.join(map(str, removed))} of {FLAGS.output_dir}")
    except (TteError, ValueError, OSError) as exc:
        print(f"tte-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


# Flags that map to a TrainConfig field of the same name (a warm start passes the ones given).
_CONFIG_FLAGS = ("data_dir", "dataset", "split", "embedding_dim", "epochs", "batch_size",
                 "learning_rate", "optimizer", "regularizer", "regularization",
                 "regularization_scope", "seed",
                 "validation_fraction", "test_fraction", "early_stopping_patience",
                 "include_implicit")


def _update():
    output_dir = FLAGS.warm_start_from
    if FLAGS["output_dir"].present and os.path.abspath(FLAGS.output_dir) != os.path.abspath(
            output_dir):
        raise ValueError("--warm_start_from writes the next version into the folder it continues; "
                         "leave --output_dir out")
    FLAGS.output_dir = output_dir                       # --keep_versions prunes this folder
    overrides = {name: FLAGS[name].value for name in _CONFIG_FLAGS if FLAGS[name].present}
    if FLAGS["hidden_units"].present:
        overrides["hidden_units"] = tuple(int(h) for h in FLAGS.hidden_units)
    overrides["log_dir"] = FLAGS.tensorboard_dir or os.path.join(output_dir, "logs")
    overrides["verbose"] = FLAGS.verbose
    update_and_export(output_dir, allow_invalid_ratings=FLAGS.allow_invalid_ratings, **overrides)


def _train():
    config = TrainConfig(
        data_dir=FLAGS.data_dir, dataset=FLAGS.dataset, split=FLAGS.split,
        embedding_dim=FLAGS.embedding_dim,
        hidden_units=tuple(int(h) for h in FLAGS.hidden_units), epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
        optimizer=FLAGS.optimizer, regularizer=FLAGS.regularizer,
        regularization=FLAGS.regularization, regularization_scope=FLAGS.regularization_scope,
        seed=FLAGS.seed,
        validation_fraction=FLAGS.validation_fraction, test_fraction=FLAGS.test_fraction,
        early_stopping_patience=FLAGS.early_stopping_patience,
        include_implicit=FLAGS.include_implicit,
        log_dir=FLAGS.tensorboard_dir or os.path.join(FLAGS.output_dir, "logs"),
        verbose=FLAGS.verbose)
    train_and_export(config, FLAGS.output_dir)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
