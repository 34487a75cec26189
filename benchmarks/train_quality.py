"""Rating quality and training time of the default model on the embedded data, Book-Crossing and
MovieLens 100K, next to a global-mean baseline (and, for the embedded data, the planted noise floor).

Usage:
  python benchmarks/train_quality.py --bookcrossing=../shared/data/book-crossing \
      --movielens=../shared/data/movielens-100k [--markdown=out.md]

Each data set is trained once with the default TrainConfig (MovieLens on fold u1); results print as
JSON lines and a Markdown table.
"""

import json
import platform
import sys
import time

from absl import app, flags

import tte_tfrs
from tte_tfrs.data.synthetic import SyntheticConfig, generate
from tte_tfrs.training.config import TrainConfig
from tte_tfrs.training.trainer import train

flags.DEFINE_string("bookcrossing", None, "Book-Crossing folder or archive.zip (skipped if unset).")
flags.DEFINE_string("movielens", None, "MovieLens 100K folder (skipped if unset).")
flags.DEFINE_string("markdown", None, "Also write the Markdown table to this file.")
FLAGS = flags.FLAGS


def noise_floor(result):
    """RMSE of the planted expected rating on the test split of the embedded data."""
    return generate(SyntheticConfig())[3].noise_floor(result.splits.test)


def measure(name, config):
    started = time.perf_counter()
    dataset = tte_tfrs.load_dataset(config.data_dir, config.dataset)
    load_seconds = time.perf_counter() - started
    result = train(config, dataset)
    row = {"data": name, "split": config.split, **result.splits.sizes(),
           "load_seconds": round(load_seconds, 1), **result.metrics}
    if config.data_dir is None:
        row["noise_floor_rmse"] = noise_floor(result)
    print(json.dumps(row), flush=True)
    return row


def markdown(rows):
    head = ("| data | split | train / val / test | test RMSE | test MAE | global-mean RMSE | "
            "noise floor | epochs | train s | examples/s overall | examples/s per epoch |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['data']} | {r['split']} | {r['train']:,} / {r['validation']:,} / {r['test']:,} | "
        f"{r['test_rmse']:.4f} | {r['test_mae']:.4f} | {r['baseline_rmse']:.4f} | "
        f"{r.get('noise_floor_rmse', float('nan')):.4f} | {r['epochs_run']} | "
        f"{r['train_seconds']:.1f} | {r['train_examples_per_second']:,} | "
        f"{r['epoch_examples_per_second']:,} |\n" for r in rows)
    return head + body.replace("| nan |", "| – |")


def main(argv):
    del argv
    rows = [measure("embedded (synthetic)", TrainConfig())]
    if FLAGS.bookcrossing:
        rows.append(measure("Book-Crossing explicit", TrainConfig(data_dir=FLAGS.bookcrossing)))
    if FLAGS.movielens:
        rows.append(measure("MovieLens 100K", TrainConfig(data_dir=FLAGS.movielens, split="u1")))
    table = markdown(rows)
    info = (f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}; "
            f"command: python {' '.join(sys.argv)}\n\n")
    print(info + table)
    if FLAGS.markdown:
        with open(FLAGS.markdown, "w", encoding="utf-8") as f:
            f.write(info + table)


if __name__ == "__main__":
    app.run(main)
