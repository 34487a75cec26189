"""tte_tfrs against its peers, in one process, on identical rows: rating error and top-K quality.

Usage (needs the bench extra: scikit-surprise, myfm):
  python benchmarks/peers.py --movielens=../shared/data/movielens-100k \
      --bookcrossing=../shared/data/book-crossing [--config="retrieval_weight=0.3"] \
      [--markdown=out.md] [--json=out.json]
  python benchmarks/peers.py --held_out=validation ...   # choose settings: ours only, validation

Splits: MovieLens 100K folds u1-u5 (10% of each base file is validation), Book-Crossing explicit
ratings and the embedded synthetic data by our seeded 80/10/10 split. Every model sees the same rows
and the same information:

- ours (`tte_tfrs.train` with TrainConfig defaults, or each --config's changes) early-stops on the
  validation rows;
- myFM (Bayesian FM, Gibbs sampling; rank 10, 200 iterations) on exactly our features (ids + side
  features, built by our towers' preprocessing), fitted on train + validation;
- Surprise SVD, BaselineOnly and SVD++ (MovieLens and embedded data; on Book-Crossing its cost grows
  with the square of a user's ratings) at their defaults on train + validation; SVD tuned on the
  validation rows over a 24-point grid (`surprise_peers.SVD_GRID`), refitted on train + validation;
- popularity (most-rated items of train + validation; on Book-Crossing also counting the implicit
  rating-0 interactions) for top-K, and the global mean for the rating error.

Top-K (`topk_protocol`): every model ranks the items of the training rows for up to --max_users users
with a relevant held-out rating (>= 8 of 10, >= 4 of 5), excluding each user's training, validation
and implicit items. Test rows are used only for the final numbers; --held_out=validation measures
our settings on the validation rows (test rows untouched, no peers). --held_out=inner is the
validation-only way to judge settings that train on the validation rows themselves (cross_fit,
refit): the training and validation rows become the whole data set, split again at random with the
same fractions and seed, and every model, peers included, is measured on that inner split's test
rows exactly as on the real test rows; the real test rows are never read.
"""

import dataclasses
import json
import os
import platform
import sys
import time

import numpy as np
import pandas as pd
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# tte_tfrs first: it sets TF_USE_LEGACY_KERAS before the peers' modules import TensorFlow.
import tte_tfrs  # noqa: E402, I001
import surprise_peers  # noqa: E402
import inner_split  # noqa: E402
import topk_protocol  # noqa: E402
from config_text import parse_config  # noqa: E402

from tte_tfrs.data.dataset import fill_missing, join_features  # noqa: E402
from tte_tfrs.data.split import split_ratings  # noqa: E402
from tte_tfrs.evaluation import metrics  # noqa: E402
from tte_tfrs.exports.writer import item_embeddings  # noqa: E402
from tte_tfrs.training import trainer  # noqa: E402
from tte_tfrs.training.config import TrainConfig  # noqa: E402

flags.DEFINE_string("movielens", None, "MovieLens 100K folder (skipped if unset).")
flags.DEFINE_string("bookcrossing", None, "Book-Crossing folder or archive.zip (skipped if unset).")
flags.DEFINE_bool("embedded", True, "Include the embedded synthetic data (with its noise floor).")
flags.DEFINE_list("folds", ["u1", "u2", "u3", "u4", "u5"], "MovieLens folds.")
flags.DEFINE_multi_string("config", [""], "Our model: TrainConfig fields changed from the "
                          "defaults, e.g. 'retrieval_weight=0.3,user_history=false'; repeat the "
                          "flag to compare several settings.")
flags.DEFINE_enum("held_out", "test", ["test", "validation", "inner"], "Rows the metrics are "
                  "measured on; validation runs our settings only (for choosing defaults); inner "
                  "splits the training + validation rows again and measures everyone on its test "
                  "rows (the real test rows unread).")
flags.DEFINE_integer("k", 10, "Top-K list length.")
flags.DEFINE_integer("max_users", 2000, "Users sampled for top-K metrics.")
flags.DEFINE_integer("myfm_rank", 10, "myFM rank.")
flags.DEFINE_integer("myfm_iter", 200, "myFM Gibbs iterations.")
flags.DEFINE_bool("svdpp", True, "Run Surprise SVD++ (never on Book-Crossing).")
flags.DEFINE_bool("myfm", True, "Run myFM.")
flags.DEFINE_bool("myfm_train_only", False, "Also fit myFM on the training rows alone (what a "
                  "model that holds the validation rows out sees), to measure what those rows "
                  "are worth.")
flags.DEFINE_list("myfm_histories", [], "Also fit myFM (train + validation) with these history "
                  "features (user, item) as columns of its relation blocks, built from the same "
                  "training interactions as ours: the same information as our settings that use "
                  "them. myFM keeps every sample's factors: on Book-Crossing (800k history "
                  "columns) that is more than 24 GiB.")
flags.DEFINE_bool("surprise", True, "Run the Surprise peers.")
flags.DEFINE_string("markdown", None, "Write the Markdown tables here.")
flags.DEFINE_string("json", None, "Write all rows as JSON here.")
flags.DEFINE_list("merge", [], "Only merge the rows of these --json files (runs made one data "
                  "set or fold at a time) into one table.")
FLAGS = flags.FLAGS
BOOK_CROSSING = "Book-Crossing explicit"


def _row(name, held, predicted, positions, protocol, seconds, note=""):
    row = {"model": name, "note": note, "train_seconds": round(seconds, 1)}
    if predicted is not None:
        row.update({"rmse": metrics.rmse(held["rating"], predicted),
                    "mae": metrics.mae(held["rating"], predicted)})
    if positions is not None:
        row.update(topk_protocol.top_k_metrics(positions, protocol, FLAGS.k))
    return row


def user_vectors(model, dataset, user_ids):
    table = fill_missing(pd.DataFrame({"user_id": user_ids}).merge(
        dataset.users, on="user_id", how="left"), dataset.user_features)
    return item_embeddings(model.user_tower, table, dataset.user_features)


def item_vectors(model, dataset, item_ids):
    table = fill_missing(pd.DataFrame({"item_id": item_ids}).merge(
        dataset.items, on="item_id", how="left"), dataset.item_features)
    return item_embeddings(model.item_tower, table, dataset.item_features)


def ours(config, text, dataset, splits, protocol, held):
    started = time.perf_counter()
    result = trainer.train(config, dataset)
    seconds = time.perf_counter() - started
    assert result.splits.hashes() == splits.hashes(), "ours and the peers must share the rows"
    predicted = trainer.predict(result.model, join_features(held, dataset))
    u = user_vectors(result.model, dataset, protocol.users)
    v = item_vectors(result.model, dataset, protocol.candidates)
    positions = topk_protocol.rank_by_embeddings(u, v, protocol, FLAGS.k)
    note = (f"{result.metrics['epochs_run']} epochs, "
            f"validation RMSE {result.metrics['validation_rmse']:.4f}, "
            f"{result.metrics['epoch_examples_per_second']:,} examples/s per epoch")
    return _row(f"tte_tfrs [{text or 'defaults'}]", held, predicted, positions, protocol,
                seconds, note)


def myfm_rows(config, dataset, splits, protocol):
    import myfm_peer  # here, so that a run --nomyfm needs no scipy (tests/test_peers_run.py)
    both = pd.concat([splits.train, splits.validation], ignore_index=True)
    side_only = dataclasses.replace(config, user_history=False, item_history=False,
                                    retrieval_weight=0.0)
    fits = [("myFM (ids + side features)", both, side_only)]
    if FLAGS.myfm_train_only:
        fits.append(("myFM (ids + side features), training rows only", splits.train, side_only))
    if FLAGS.myfm_histories:
        unknown = set(FLAGS.myfm_histories) - {"user", "item"}
        if unknown:
            raise app.UsageError(f"--myfm_histories takes user and/or item, not {sorted(unknown)}")
        with_histories = dataclasses.replace(side_only,
                                             user_history="user" in FLAGS.myfm_histories,
                                             item_history="item" in FLAGS.myfm_histories)
        fits.append((f"myFM (ids + side features + {' and '.join(FLAGS.myfm_histories)} "
                     "history)", both, with_histories))
    rows = []
    for name, fitted_rows, fitted_config in fits:
        model = trainer.build_model(fitted_config, dataset, join_features(fitted_rows, dataset),
                                    0.0, histories=trainer.histories_for(fitted_config, dataset,
                                                                         splits))
        peer = myfm_peer.MyFMPeer(model.user_tower, model.item_tower, dataset, FLAGS.myfm_rank,
                                  FLAGS.myfm_iter).fit(fitted_rows)
        predicted = peer.predict(splits.test)
        u, v = peer.ranking_vectors(protocol.users, protocol.candidates)
        positions = topk_protocol.rank_by_embeddings(u, v, protocol, FLAGS.k)
        rows.append(_row(name, splits.test, predicted, positions, protocol, peer.fit_seconds,
                         f"rank {FLAGS.myfm_rank}, {FLAGS.myfm_iter} Gibbs iterations"))
    return rows


def surprise_rows(label, dataset, splits, protocol):
    scale = (1.0, dataset.rating_scale[1]) if dataset.implicit_rating is not None else \
        dataset.rating_scale
    with_svdpp = FLAGS.svdpp and label != BOOK_CROSSING
    rows = []
    for name, algo, trainset, predicted, seconds, note in surprise_peers.fit_peers(
            splits.train, splits.validation, splits.test, scale, with_svdpp):
        positions = topk_protocol.rank_by_function(
            surprise_peers.score_function(algo, trainset, protocol), protocol, FLAGS.k)
        rows.append(_row(name, splits.test, predicted, positions, protocol, seconds, note))
    return rows


def baseline_rows(dataset, splits, protocol):
    rows = []
    score = surprise_peers.popularity_scores(splits.train, splits.validation, protocol)
    rows.append(_row("popularity (most rated)", splits.test, None,
                     topk_protocol.rank_by_function(score, protocol, FLAGS.k), protocol, 0.0,
                     "train + validation ratings"))
    if dataset.implicit_rating is not None:
        implicit = dataset.ratings[~dataset.explicit_mask()]
        score = surprise_peers.popularity_scores(splits.train, splits.validation, protocol,
                                                 implicit)
        rows.append(_row("popularity (most interacted)", splits.test, None,
                         topk_protocol.rank_by_function(score, protocol, FLAGS.k), protocol, 0.0,
                         "train + validation ratings + implicit interactions"))
    mean = float(pd.concat([splits.train, splits.validation])["rating"].mean())
    rows.append(_row("global mean", splits.test, np.full(len(splits.test), mean), None, protocol,
                     0.0))
    return rows


def run_split(label, dataset, split, data_dir, configs):
    recorded = split
    if FLAGS.held_out == "inner":
        dataset = inner_split.inner_dataset(dataset, split, TrainConfig(split=split, verbose=0))
        split, recorded = "random", f"{split}, inner"
    base = TrainConfig(data_dir=data_dir, split=split, verbose=0)
    splits = split_ratings(dataset, split, base.validation_fraction,
                                               base.test_fraction, False, base.seed)
    scored = "validation" if FLAGS.held_out == "validation" else "test"     # inner: its test
    protocol = topk_protocol.make_protocol(dataset, splits, scored, max_users=FLAGS.max_users)
    held = splits.validation if scored == "validation" else splits.test
    rows = []

    def emit(new_rows):          # each row printed as soon as it is measured: a later crash
        for row in new_rows:     # (a peer out of memory, say) does not lose it
            row.update({"data": label, "split": recorded, "held_out": FLAGS.held_out})
            print(json.dumps(row), flush=True)
        rows.extend(new_rows)

    for text, values in configs:
        emit([ours(dataclasses.replace(base, **values), text, dataset, splits, protocol, held)])
    if FLAGS.held_out != "validation":
        if FLAGS.myfm:
            emit(myfm_rows(base, dataset, splits, protocol))
        if FLAGS.surprise:
            emit(surprise_rows(label, dataset, splits, protocol))
        emit(baseline_rows(dataset, splits, protocol))
    return rows, splits


def noise_floor_row(splits):
    from tte_tfrs.data.synthetic import SyntheticConfig, generate
    observed, best = generate(SyntheticConfig())[3].best_predictions(splits.test)
    return {"model": "planted truth (noise floor)", "data": "embedded (synthetic)",
            "split": "random", "rmse": metrics.rmse(observed, best),
            "mae": metrics.mae(observed, best)}


def summarise(rows):
    """Means over folds per (data, model), in first-seen order."""
    groups = {}
    for row in rows:
        groups.setdefault((row["data"], row["model"]), []).append(row)
    table = []
    for (data, model), group in groups.items():
        mean = {"data": data, "model": model, "folds": len(group), "note": group[0].get("note", "")}
        for key in group[0]:
            values = [g.get(key) for g in group]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                mean[key] = float(np.mean(values))
        table.append(mean)
    return table


COLUMNS = (("RMSE", "rmse", ".4f"), ("MAE", "mae", ".4f"), ("Recall@{k}", "recall@{k}", ".4f"),
           ("NDCG@{k}", "ndcg@{k}", ".4f"), ("HitRate@{k}", "hit_rate@{k}", ".4f"),
           ("coverage@{k}", "coverage@{k}", ".4f"), ("top item share", "top_item_share", ".3f"),
           ("train s", "train_seconds", ".1f"))


def markdown(table, k):
    names = [c[0].format(k=k) for c in COLUMNS]
    out = ("| data | model | folds | " + " | ".join(names) + " |\n|"
           + "---|" * (3 + len(names)) + "\n")
    for row in table:
        cells = [format(row[key.format(k=k)], spec) if key.format(k=k) in row else "–"
                 for _, key, spec in COLUMNS]
        out += f"| {row['data']} | {row['model']} | {row['folds']} | " + " | ".join(cells) + " |\n"
    notes = {(r["model"], r["note"]) for r in table if r.get("note") and r["folds"] == 1}
    return out + "\n" + "".join(f"- {m}: {n}\n" for m, n in sorted(notes))


def main(argv):
    del argv
    configs = [(text, parse_config(text)) for text in FLAGS.config]
    started = time.perf_counter()
    rows = []
    for path in FLAGS.merge:
        with open(path, encoding="utf-8") as f:
            rows += json.load(f)["rows"]
    if FLAGS.embedded and not FLAGS.merge:
        dataset = tte_tfrs.load_dataset()
        found, splits = run_split("embedded (synthetic)", dataset, "random", None, configs)
        rows += found + ([noise_floor_row(splits)] if FLAGS.held_out == "test" else [])
    if FLAGS.movielens and not FLAGS.merge:
        dataset = tte_tfrs.load_dataset(FLAGS.movielens)
        for fold in FLAGS.folds:
            rows += run_split("MovieLens 100K", dataset, fold, FLAGS.movielens, configs)[0]
    if FLAGS.bookcrossing and not FLAGS.merge:
        dataset = tte_tfrs.load_dataset(FLAGS.bookcrossing)
        rows += run_split(BOOK_CROSSING, dataset, "random", FLAGS.bookcrossing, configs)[0]
    table = summarise(rows)
    text = (f"Machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}. Command: python {' '.join(sys.argv)}. "
            f"Held out: {FLAGS.held_out}. Wall clock {time.perf_counter() - started:.0f} s.\n\n"
            + markdown(table, FLAGS.k))
    print(text)
    if FLAGS.markdown:
        with open(FLAGS.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    if FLAGS.json:
        with open(FLAGS.json, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "summary": table}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
