"""Training throughput of the default model with full feature towers (issue 10's goal: 300,000
examples/s per epoch).

Usage:
  python benchmarks/throughput.py [--data=/tmp/tte-throughput] [--epochs=4] [--config=...]

The generator (`tte_tfrs.data.synthetic.write_bookcrossing`) writes a Book-Crossing-format set of
400,000 interactions, 40% implicit: about 240,000 explicit ratings of 20,000 users on 30,000 books
with a books table (title text, author, publisher, year). Each --config (TrainConfig fields
changed from the defaults; repeat the flag) trains for --epochs epochs without early stopping,
in this one process, one after the other, and reports training rows / the median wall time of the
training steps of an epoch after the first (``epoch_examples_per_second``; validation and the
first epoch's tracing excluded).
"""

import json
import os
import platform

from absl import app, flags
from config_text import parse_config

from tte_tfrs.data.loader import load_dataset
from tte_tfrs.data.synthetic import SyntheticConfig, write_bookcrossing
from tte_tfrs.training.config import TrainConfig
from tte_tfrs.training.trainer import train

flags.DEFINE_string("data", "/tmp/tte-throughput", "Where the generated set is written (once).")
flags.DEFINE_integer("epochs", 4, "Epochs per run (no early stopping).")
flags.DEFINE_multi_string("config", [""], "TrainConfig fields changed from the defaults.")
FLAGS = flags.FLAGS
SIZE = SyntheticConfig(n_users=20000, n_items=30000, n_interactions=400000, seed=13)


def main(argv):
    del argv
    if not os.path.exists(os.path.join(FLAGS.data, "Ratings.csv")):
        os.makedirs(FLAGS.data, exist_ok=True)
        write_bookcrossing(FLAGS.data, SIZE)
    dataset = load_dataset(FLAGS.data)
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cores",
                      "counts": dataset.counts(),
                      "item_features": [s.name for s in dataset.item_features],
                      "user_features": [s.name for s in dataset.user_features]}), flush=True)
    for text in FLAGS.config:
        config = TrainConfig(data_dir=FLAGS.data, epochs=FLAGS.epochs, early_stopping_patience=0,
                             verbose=0, **parse_config(text))
        result = train(config, dataset)
        print(json.dumps({"config": text or "defaults", **{
            k: result.metrics[k] for k in ("epoch_examples_per_second",
                                           "train_examples_per_second", "validation_rmse")},
            "train_rows": result.splits.sizes()["train"]}), flush=True)


if __name__ == "__main__":
    app.run(main)
