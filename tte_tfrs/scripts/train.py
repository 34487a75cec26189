"""tte-train: train the two-tower rating model and export it for TF Serving.

Examples:
  tte-train                                   # embedded data -> saved_models/
  tte-train --data_dir=~/Downloads/archive.zip --epochs=20
  tte-train --data_dir=ml-100k --dataset=movielens --split=u1
  tte-train --warm_start_from=saved_models --data_dir=new_ratings/   # next version, updated
  tte-train --rollback=saved_models           # make the previous version current again
  TF_CONFIG='{"cluster": {"worker": ["h1:2222", "h2:2222"]}, "task": {"type": "worker",
    "index": 0}}' tte-train --strategy=multi_worker   # the same command on every worker
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import flags

from tte_tfrs import paths
from tte_tfrs.errors import ConfigError
from tte_tfrs.exports import lifecycle
from tte_tfrs.exports.layout import ROLLED_BACK
from tte_tfrs.scripts import cli
from tte_tfrs.training import distributed
from tte_tfrs.training.config import TrainConfig
from tte_tfrs.workflows import train_and_export, update_and_export

PROGRAM = "tte-train"
# TrainConfig fields that are not flags: log_dir is --tensorboard_dir (default OUTPUT_DIR/logs).
NOT_FLAGS = ("log_dir",)
BACKUP = ".backup"          # BackupAndRestore's folder under OUTPUT_DIR when a strategy is set


def define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string("output_dir", "saved_models", "Export root (TF Serving layout).",
                        flag_values=values)
    cli.define_config_flags(values, TrainConfig, skip=NOT_FLAGS, defaults={"verbose": 2})
    flags.DEFINE_string("tensorboard_dir", None,
                        "TensorBoard logs; default OUTPUT_DIR/logs.",
                        flag_values=values)
    flags.DEFINE_string("rollback", None,
                        "Instead of training, make the previous version of this export folder "
                        "current again (the current one is moved to .rolled_back/).",
                        flag_values=values)
    flags.DEFINE_string("warm_start_from", None,
                        "Continue the current version of this export folder on new data "
                        "(--data_dir, or the parent's own data when left out) and write the next "
                        "version there. Flags given on the command line override the parent's "
                        "settings; embedding_dim, hidden_units, regularizer, min_count and "
                        "max_text_tokens stay the parent's.", flag_values=values)
    flags.DEFINE_integer("keep_versions", 0,
                         "After exporting, delete all but the newest N versions (0 keeps all); the "
                         "current version is never deleted.", lower_bound=0, flag_values=values)


def main(values: flags.FlagValues) -> int:
    if values.rollback:
        root = values.rollback
        if not os.path.isdir(root):
            raise ConfigError(f"{root} is not an export folder", field="rollback")
        rolled_back, current = lifecycle.rollback(root)
        print(f"Rolled back {root}: version {current} is current again; version {rolled_back} "
              f"was moved to {os.path.join(root, ROLLED_BACK)}")
        return 0
    if values.warm_start_from:
        output_dir = values.warm_start_from
        if values["output_dir"].present and os.path.abspath(values.output_dir) != \
                os.path.abspath(output_dir):
            raise ConfigError("--warm_start_from writes the next version into the folder it "
                              "continues; leave --output_dir out", field="output_dir")
        overrides = cli.config_values(values, TrainConfig, only_given=True)
        if overrides.get("strategy", "none") != "none" or overrides.get("input_mode") == "streaming":
            raise ConfigError("an update (--warm_start_from) runs in one process with its data in "
                              "memory; leave out --strategy and --input_mode=streaming",
                              field="strategy" if "strategy" in overrides else "input_mode")
        overrides.update(strategy="none", input_mode="memory")
        _check_alone(overrides)
        overrides["log_dir"] = _log_dir(values, output_dir)
        overrides["verbose"] = values.verbose
        if not os.path.isdir(output_dir):
            raise ConfigError(f"{output_dir} is not an export folder", field="warm_start_from")
        paths.writable_folder(output_dir, "warm_start_from")
        with lifecycle.writer_lock(output_dir):
            update_and_export(output_dir, **overrides)
            _prune(output_dir, values.keep_versions)
        return 0
    output_dir = values.output_dir
    settings = cli.config_values(values, TrainConfig)
    if settings["strategy"] != "none" and not settings["backup_dir"]:
        settings["backup_dir"] = os.path.join(output_dir, BACKUP)
    config = TrainConfig(**settings, log_dir=_log_dir(values, output_dir))
    train_and_export(config, output_dir)
    if distributed.read_role(config.strategy).is_chief:    # other workers wrote a temporary copy
        _prune(output_dir, values.keep_versions)
    return 0


def _check_alone(overrides: dict) -> None:
    """Checks each setting given on the command line on its own (the parent's values fill the
    rest later), so a bad flag stops the update before anything is read."""
    try:
        TrainConfig(**overrides)
    except ConfigError as exc:
        if exc.field in overrides:
            raise


def _prune(output_dir: str, keep: int) -> None:
    if keep:
        removed = lifecycle.prune(output_dir, keep)
        if removed:
            print(f"Pruned versions {', '.join(map(str, removed))} of {output_dir}")


def _log_dir(values: flags.FlagValues, output_dir: str) -> str:
    return values.tensorboard_dir if values.tensorboard_dir is not None else \
        os.path.join(output_dir, "logs")


def run(argv: Sequence[str] | None = None) -> int:
    """The ``tte-train`` console script; returns the exit code."""
    return cli.run(PROGRAM, __doc__, define_flags, main, argv,
                   aliases={"log_dir": "tensorboard_dir"})


if __name__ == "__main__":
    sys.exit(run())
