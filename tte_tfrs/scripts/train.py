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

from tte_tfrs.errors import ConfigError
from tte_tfrs.exports import lifecycle
from tte_tfrs.exports.layout import ROLLED_BACK
from tte_tfrs.scripts import cli
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
    flags.DEFINE_bool("allow_invalid_ratings", False,
                      "With --warm_start_from: drop ratings outside the scale instead of refusing "
                      "the new data.", flag_values=values)
    flags.DEFINE_integer("keep_versions", 0,
                         "After exporting, delete all but the newest N versions (0 keeps all); the "
                         "current version is never deleted.", lower_bound=0, flag_values=values)


def main(values: flags.FlagValues) -> int:
    if values.rollback:
        root = cli.expand_path(values.rollback)
        rolled_back, current = lifecycle.rollback(root)
        print(f"Rolled back {root}: version {current} is current again; version {rolled_back} "
              f"was moved to {os.path.join(root, ROLLED_BACK)}")
        return 0
    if values.warm_start_from:
        output_dir = cli.expand_path(values.warm_start_from)
        if values["output_dir"].present and os.path.abspath(
                cli.expand_path(values.output_dir)) != os.path.abspath(output_dir):
            raise ValueError("--warm_start_from writes the next version into the folder it "
                             "continues; leave --output_dir out")
        overrides = cli.config_values(values, TrainConfig, only_given=True)
        if overrides.get("strategy", "none") != "none" or overrides.get("input_mode") == "streaming":
            raise ConfigError("an update (--warm_start_from) runs in one process with its data in "
                              "memory; leave out --strategy and --input_mode=streaming",
                              field="strategy" if "strategy" in overrides else "input_mode")
        overrides.update(strategy="none", input_mode="memory")
        overrides["log_dir"] = _log_dir(values, output_dir)
        overrides["verbose"] = values.verbose
        if "data_dir" in overrides:
            overrides["data_dir"] = cli.expand_path(overrides["data_dir"])
        update_and_export(output_dir, allow_invalid_ratings=values.allow_invalid_ratings,
                          **overrides)
    else:
        output_dir = cli.expand_path(values.output_dir)
        settings = cli.config_values(values, TrainConfig)
        for name in ("data_dir", "streaming_dir", "backup_dir"):
            settings[name] = cli.expand_path(settings[name])
        if settings["strategy"] != "none" and not settings["backup_dir"]:
            settings["backup_dir"] = os.path.join(output_dir, BACKUP)
        train_and_export(TrainConfig(**settings, log_dir=_log_dir(values, output_dir)),
                         output_dir)
    if values.keep_versions:
        removed = lifecycle.prune(output_dir, values.keep_versions)
        if removed:
            print(f"Pruned versions {', '.join(map(str, removed))} of {output_dir}")
    return 0


def _log_dir(values: flags.FlagValues, output_dir: str) -> str:
    return cli.expand_path(values.tensorboard_dir) or os.path.join(output_dir, "logs")


def run(argv: Sequence[str] | None = None) -> int:
    """The ``tte-train`` console script; returns the exit code."""
    return cli.run(PROGRAM, __doc__, define_flags, main, argv)


if __name__ == "__main__":
    sys.exit(run())
