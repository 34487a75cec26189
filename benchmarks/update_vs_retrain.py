"""Warm-start update versus full retrain on Book-Crossing explicit ratings (issue 5, SRS NFR1).

Usage:
  python benchmarks/update_vs_retrain.py --bookcrossing=../shared/data/book-crossing \
      [--markdown=out.md] [--json=out.json]

Protocol (fixed, no randomness beyond the seed):
  1. The explicit ratings in file order (the archive's Ratings.csv: users in the source matrix's
     order, then ISBNs) are cut at 80%: the older 80% exist first, the remaining 20% arrive later.
  2. New users are those with no rating in the older part. 20% of each new user's later ratings
     (seeded draw) are held out; neither model trains on them.
  3. Base: the default model trained on the older 80%, exported.
  4. Update: `update_and_export` continues the base export with the later ratings (minus held-out).
  5. Full retrain: the default model trained from scratch on older + later (minus held-out).
  Both models are scored on the held-out ratings of new users (and the base model for reference).
  Times are wall-clock seconds of the training call (data already in memory; for the update this
  includes reading the parent's checkpoint) and of the export. The base export's default ANN index
  is then refreshed for the update (`refresh_indexes`), and the choice (re-encode or rebuild) shown.
"""

import dataclasses
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import tensorflow as tf
from absl import app, flags

import tte_tfrs  # before TensorFlow: sets TF_USE_LEGACY_KERAS
from tte_tfrs.data.dataset import join_features
from tte_tfrs.evaluation import metrics
from tte_tfrs.exports.writer import export
from tte_tfrs.model.two_tower import RATING
from tte_tfrs.retrieval.building import build_index, refresh_indexes
from tte_tfrs.training import trainer as training
from tte_tfrs.training.config import TrainConfig
from tte_tfrs.training.warm_start import warm_start

flags.DEFINE_string("bookcrossing", None, "Book-Crossing folder or archive.zip.", required=True)
flags.DEFINE_float("old_fraction", 0.8, "Share of the explicit ratings (file order) seen first.")
flags.DEFINE_float("holdout_fraction", 0.2, "Share of each new user's later ratings held out.")
flags.DEFINE_integer("seed", 42, "Seed of the held-out draw and of training.")
flags.DEFINE_string("markdown", None, "Also write the Markdown table to this file.")
flags.DEFINE_string("json", None, "Also write the JSON results to this file.")
FLAGS = flags.FLAGS


def cut(dataset, old_fraction, holdout_fraction, seed):
    """(old, later, held_out) rating frames, as the module docstring describes."""
    explicit = dataset.ratings[dataset.explicit_mask()].reset_index(drop=True)
    boundary = int(len(explicit) * old_fraction)
    old, later = explicit.iloc[:boundary], explicit.iloc[boundary:]
    new_user = ~later["user_id"].isin(set(old["user_id"]))
    draw = np.random.default_rng(seed).random(len(later)) < holdout_fraction
    held_out = later[new_user.to_numpy() & draw]
    later = later.drop(held_out.index)
    return old.reset_index(drop=True), later.reset_index(drop=True), held_out


def rmse_on(model, dataset, ratings):
    columns = join_features(ratings, dataset)
    return metrics.rmse(columns[RATING], training.predict(model, columns))


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def main(argv):
    del argv
    dataset = tte_tfrs.load_dataset(FLAGS.bookcrossing)
    old, later, held_out = cut(dataset, FLAGS.old_fraction, FLAGS.holdout_fraction, FLAGS.seed)
    with_ratings = lambda frame: dataclasses.replace(dataset, ratings=frame)  # noqa: E731
    config = TrainConfig(test_fraction=0.0, seed=FLAGS.seed)
    work = tempfile.mkdtemp(prefix="tte-update-bench-")
    rows = []

    base, base_seconds = timed(training.train, config, with_ratings(old))
    _, base_export_seconds = timed(export, base, os.path.join(work, "updated"))
    base_rmse = rmse_on(base.model, dataset, held_out)
    _, base_index_seconds = timed(build_index, os.path.join(work, "updated"))

    # The archive's one rating of 11 was dropped (and counted) on reading, as an update drops it.
    update, update_seconds = timed(warm_start, os.path.join(work, "updated"),
                                   dataset=with_ratings(later), seed=FLAGS.seed)
    _, update_export_seconds = timed(export, update, os.path.join(work, "updated"))
    update_rmse = rmse_on(update.model, dataset, held_out)
    refreshed, refresh_seconds = timed(refresh_indexes, os.path.join(work, "updated"),
                                       update.parent.version)
    ((backend, meta),) = refreshed.items()
    index = {"backend": backend, "base_build_seconds": base_index_seconds,
             "refresh_seconds": refresh_seconds, "refresh": meta["refresh"]}

    full_data = with_ratings(pd.concat([old, later], ignore_index=True))
    full, full_seconds = timed(training.train, config, full_data)
    _, full_export_seconds = timed(export, full, os.path.join(work, "retrained"))
    full_rmse = rmse_on(full.model, dataset, held_out)

    common = {"held_out_ratings": int(len(held_out)),
              "held_out_users": int(held_out["user_id"].nunique())}
    rows.append({"run": "base (older 80% only)", "train_rows": len(base.splits.train),
                 "epochs": base.metrics["epochs_run"], "train_seconds": base_seconds,
                 "export_seconds": base_export_seconds, "held_out_rmse": base_rmse, **common})
    rows.append({"run": "update (warm start on the later 20%)", "train_rows": len(update.splits.train),
                 "epochs": update.metrics["epochs_run"], "train_seconds": update_seconds,
                 "export_seconds": update_export_seconds, "held_out_rmse": update_rmse,
                 "data_added": update.update["data_added"], **common})
    rows.append({"run": "full retrain (older + later)", "train_rows": len(full.splits.train),
                 "epochs": full.metrics["epochs_run"], "train_seconds": full_seconds,
                 "export_seconds": full_export_seconds, "held_out_rmse": full_rmse, **common})
    ratios = {"update_time_over_retrain": update_seconds / full_seconds,
              "update_rmse_over_retrain": update_rmse / full_rmse}
    print(json.dumps(index), flush=True)
    for row in rows:
        print(json.dumps(row), flush=True)
    print(json.dumps(ratios), flush=True)

    table = ("| run | training rows | epochs | train s | export s | held-out RMSE (new users) |\n"
             "|---|---|---|---|---|---|\n" + "".join(
                 f"| {r['run']} | {r['train_rows']:,} | {r['epochs']} | {r['train_seconds']:.1f} | "
                 f"{r['export_seconds']:.1f} | {r['held_out_rmse']:.4f} |\n" for r in rows))
    table += (f"\nUpdate time / retrain time: **{ratios['update_time_over_retrain']:.2f}** (goal "
              f"≤ 0.20); update RMSE / retrain RMSE: **{ratios['update_rmse_over_retrain']:.4f}** "
              f"(goal ≤ 1.01). Held out: {common['held_out_ratings']:,} ratings of "
              f"{common['held_out_users']:,} new users.\n\nIndex: the base export's "
              f"{index['backend']} index (built in {index['base_build_seconds']:.1f} s) was "
              f"refreshed for the update in {index['refresh_seconds']:.1f} s: {index['refresh']}.\n")
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"TensorFlow {tf.__version__}")
    command = "python " + " ".join(sys.argv)
    text = f"Command: `{command}`\n\nMachine: {machine}\n\n{table}"
    print(text)
    if FLAGS.markdown:
        with open(FLAGS.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    if FLAGS.json:
        with open(FLAGS.json, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "ratios": ratios, "index": index, "command": command,
                       "machine": machine}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
