"""Validation-only tuning sweep: trains one model per setting and prints its validation RMSE.

Usage:
  python benchmarks/sweep.py --data_dir=../shared/data/book-crossing \
      "optimizer=adagrad,learning_rate=0.5,regularization=0.15" "optimizer=adam,learning_rate=0.01"

Each positional argument is one setting: comma-separated `TrainConfig` fields (the rest are the
defaults). Only validation RMSE is printed, so a sweep cannot tune on the test split. MovieLens runs
on fold u1 (`--split`). One JSON line per setting.
"""

import dataclasses
import json
import time

from absl import app, flags

import tte_tfrs
from tte_tfrs.training.config import TrainConfig
from tte_tfrs.training.trainer import train

flags.DEFINE_string("data_dir", None, "Data folder; unset means the embedded data.")
flags.DEFINE_string("dataset", "auto", "Data layout (auto, kaggle, bx, movielens).")
flags.DEFINE_string("split", None, "Split; default random, u1 for MovieLens.")
FLAGS = flags.FLAGS


def parse_setting(text):
    """'a=1,b=x' -> {'a': 1, 'b': 'x'}, typed like the `TrainConfig` defaults."""
    defaults = TrainConfig()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {}
    for part in filter(None, text.split(",")):
        name, _, raw = part.partition("=")
        if name not in fields:
            raise app.UsageError(f"{name!r} is not a TrainConfig field")
        default = getattr(defaults, name)
        if isinstance(default, bool):
            values[name] = raw.lower() in ("1", "true", "yes")
        elif isinstance(default, tuple):
            values[name] = tuple(int(x) for x in raw.split("/") if x)
        elif default is None:
            values[name] = raw
        else:
            values[name] = type(default)(raw)
    return values


def main(argv):
    dataset = tte_tfrs.load_dataset(FLAGS.data_dir, FLAGS.dataset)
    split = FLAGS.split or ("u1" if dataset.name == "movielens-100k" else "random")
    for text in argv[1:] or [""]:
        config = TrainConfig(data_dir=FLAGS.data_dir, dataset=FLAGS.dataset, split=split,
                             **parse_setting(text))
        started = time.perf_counter()
        result = train(config, dataset)
        print(json.dumps({"data": dataset.name, "setting": text or "defaults",
                          "validation_rmse": round(result.metrics["validation_rmse"], 4),
                          "epochs": result.metrics["epochs_run"],
                          "epoch_examples_per_second": result.metrics["epoch_examples_per_second"],
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    app.run(main)
