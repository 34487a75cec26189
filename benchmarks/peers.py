"""tte_tfrs against Surprise peers on identical splits: rating quality, top-K quality and speed.

Usage (needs the bench extra: pip install -e ".[bench]"):
  python benchmarks/peers.py --movielens=../shared/data/movielens-100k \
      --bookcrossing=../shared/data/book-crossing [--svdpp] [--markdown=out.md] [--json=out.json]

Per data set and split, in one process: our default model (TrainConfig defaults; exported and
evaluated with `tte_tfrs.evaluation`), Surprise SVD and BaselineOnly with their default settings, and
the global mean. MovieLens 100K uses the five u1-u5 folds (Surprise's published protocol); Book-Crossing
and the embedded data use our seeded 80/10/10 split. Peers train on the same training rows as our
model (our validation rows only steer early stopping). Top-K lists rank every item the model knows,
excluding the user's training items, for users with a held-out rating >= the relevance threshold.
"""

import json
import platform
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

import tte_tfrs
from tte_tfrs.data.split import split_ratings
from tte_tfrs.evaluation import metrics
from tte_tfrs.evaluation.evaluate import EvaluationConfig, default_threshold, evaluate, top_k_protocol
from tte_tfrs.exports.writer import export
from tte_tfrs.training.config import TrainConfig
from tte_tfrs.training.trainer import train

flags.DEFINE_string("movielens", None, "MovieLens 100K folder (skipped if unset).")
flags.DEFINE_string("bookcrossing", None, "Book-Crossing folder or archive.zip (skipped if unset).")
flags.DEFINE_bool("embedded", True, "Include the embedded synthetic data (with its noise floor).")
flags.DEFINE_list("folds", ["u1", "u2", "u3", "u4", "u5"], "MovieLens folds.")
flags.DEFINE_bool("svdpp", False, "Also run SVD++ (MovieLens only; slow).")
flags.DEFINE_integer("k", 10, "Top-K list length.")
flags.DEFINE_integer("max_users", 2000, "Users sampled for top-K metrics.")
flags.DEFINE_string("markdown", None, "Write the Markdown tables here.")
flags.DEFINE_string("json", None, "Write all rows as JSON here.")
FLAGS = flags.FLAGS


def surprise_rows(splits, dataset, threshold, svdpp):
    """Fits the Surprise peers on the training rows; returns one result dict per peer."""
    from surprise import SVD, BaselineOnly, Dataset, Reader, SVDpp
    low, high = dataset.rating_scale
    reader = Reader(rating_scale=(max(low, 1.0) if dataset.implicit_rating is not None else low,
                                  high))
    trainset = Dataset.load_from_df(splits.train[["user_id", "item_id", "rating"]],
                                    reader).build_full_trainset()
    test = splits.test
    users, relevant, seen = top_k_protocol(splits, "test", threshold, FLAGS.max_users)
    peers = [("Surprise SVD", SVD(random_state=0)), ("Surprise BaselineOnly", BaselineOnly(verbose=False))]
    if svdpp:
        peers.append(("Surprise SVD++", SVDpp(random_state=0)))
    rows = []
    for name, algo in peers:
        started = time.perf_counter()
        algo.fit(trainset)
        fit_seconds = time.perf_counter() - started
        predicted = np.array([algo.predict(u, i).est for u, i in zip(test["user_id"],
                                                                       test["item_id"])])
        row = {"model": name, "rmse": metrics.rmse(test["rating"], predicted),
               "mae": metrics.mae(test["rating"], predicted), "train_seconds": fit_seconds,
               "train_examples_per_second": len(splits.train) * 20 / fit_seconds
               if name != "Surprise BaselineOnly" else None}
        row.update(surprise_top_k(algo, trainset, users, relevant, seen))
        rows.append(row)
    mean = float(splits.train["rating"].mean())
    rows.append({"model": "global mean", "rmse": metrics.rmse(test["rating"], np.full(len(test), mean)),
                 "mae": metrics.mae(test["rating"], np.full(len(test), mean))})
    return rows


def surprise_top_k(algo, trainset, users, relevant, seen):
    """Ranks every training item for each user by the peer's own scoring function."""
    k = FLAGS.k
    items = np.array([trainset.to_raw_iid(i) for i in range(trainset.n_items)], dtype=object)
    bi = getattr(algo, "bi", None)
    if bi is None:
        return {}
    base = trainset.global_mean + bi
    qi = getattr(algo, "qi", None)
    row_of = {item: n for n, item in enumerate(items)}
    recommended = []
    for user in users:
        scores = base.copy()
        try:
            inner = trainset.to_inner_uid(user)
        except ValueError:                    # a user with no training ratings: items only
            inner = None
        if inner is not None:
            scores = scores + algo.bu[inner]
            if qi is not None:
                vector = algo.pu[inner]
                if hasattr(algo, "yj"):       # SVD++: implicit feedback part of the user vector
                    rated = [j for j, _ in trainset.ur[inner]]
                    vector = vector + algo.yj[rated].sum(0) / np.sqrt(max(len(rated), 1))
                scores = scores + qi @ vector
        excluded = [row_of[i] for i in seen.get(user, []) if i in row_of]
        scores[excluded] = -np.inf
        top = np.lexsort((np.arange(len(scores)), -scores))[:k]
        recommended.append(list(items[top]))
    return metrics.ranking_metrics(recommended, relevant, k, len(items))


def our_row(config, dataset, threshold):
    result = train(config, dataset)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        exported = export(result, folder)
        export_seconds = time.perf_counter() - started
        evaluated = evaluate(EvaluationConfig(output_dir=folder, data_dir=config.data_dir,
                                              dataset=config.dataset, k=FLAGS.k, ks=(FLAGS.k,),
                                              relevance_threshold=threshold, backend="exact",
                                              max_users=FLAGS.max_users))
    row = {"model": "tte_tfrs two-tower", "rmse": evaluated["rmse"], "mae": evaluated["mae"],
           "train_seconds": result.metrics["train_seconds"],
           "train_examples_per_second": result.metrics["train_examples_per_second"],
           "epochs": result.metrics["epochs_run"], "export_seconds": export_seconds,
           "catalogue": exported.manifest["item_embeddings"]["count"]}
    row.update({key: value for key, value in evaluated.items() if "@" in key or key == "users_evaluated"})
    return row, result


def run_split(name, split_name, config, dataset):
    threshold = default_threshold(dataset.rating_scale)
    ours, result = our_row(config, dataset, threshold)
    splits = split_ratings(dataset, config.split, config.validation_fraction, config.test_fraction,
                           config.include_implicit, config.seed)
    rows = [ours] + surprise_rows(splits, dataset, threshold,
                                  FLAGS.svdpp and dataset.name == "movielens-100k")
    for row in rows:
        row.update({"data": name, "split": split_name})
        print(json.dumps(row), flush=True)
    return rows, result


def noise_floor_row(result):
    from tte_tfrs.data.synthetic import SyntheticConfig, generate
    observed, best = generate(SyntheticConfig())[3].best_predictions(result.splits.test)
    return {"model": "planted truth (noise floor)", "data": "embedded (synthetic)", "split": "random",
            "rmse": metrics.rmse(observed, best), "mae": metrics.mae(observed, best)}


def summarise(rows):
    """Means over folds per (data, model)."""
    out = {}
    for row in rows:
        key = (row["data"], row["model"])
        out.setdefault(key, []).append(row)
    table = []
    for (data, model), group in out.items():
        mean = {"data": data, "model": model, "folds": len(group)}
        for key in group[0]:
            values = [g.get(key) for g in group]
            if all(isinstance(v, (int, float)) and v is not None for v in values):
                mean[key] = float(np.mean(values))
        table.append(mean)
    return table


def markdown(table, k):
    head = (f"| data | model | folds | RMSE | MAE | recall@{k} | NDCG@{k} | coverage@{k} | train s "
            "| examples/s |\n|---|---|---|---|---|---|---|---|---|---|\n")
    def fmt(row, key, spec):
        return format(row[key], spec) if key in row else "–"
    return head + "".join(
        f"| {r['data']} | {r['model']} | {r['folds']} | {fmt(r, 'rmse', '.4f')} | "
        f"{fmt(r, 'mae', '.4f')} | {fmt(r, f'recall@{k}', '.4f')} | {fmt(r, f'ndcg@{k}', '.4f')} | "
        f"{fmt(r, f'coverage@{k}', '.4f')} | {fmt(r, 'train_seconds', '.1f')} | "
        f"{fmt(r, 'train_examples_per_second', ',.0f')} |\n" for r in table)


def main(argv):
    del argv
    rows = []
    if FLAGS.embedded:
        dataset = tte_tfrs.load_dataset()
        found, result = run_split("embedded (synthetic)", "random", TrainConfig(), dataset)
        rows += found + [noise_floor_row(result)]
    if FLAGS.movielens:
        dataset = tte_tfrs.load_dataset(FLAGS.movielens)
        for fold in FLAGS.folds:
            rows += run_split("MovieLens 100K", fold, TrainConfig(data_dir=FLAGS.movielens,
                                                                    split=fold), dataset)[0]
    if FLAGS.bookcrossing:
        dataset = tte_tfrs.load_dataset(FLAGS.bookcrossing)
        rows += run_split("Book-Crossing explicit", "random",
                          TrainConfig(data_dir=FLAGS.bookcrossing), dataset)[0]
    table = summarise(rows)
    text = (f"Machine: {platform.machine()} {platform.system()}, Python {platform.python_version()}. "
            f"Command: python {' '.join(sys.argv)}\n\n" + markdown(table, FLAGS.k))
    print(text)
    if FLAGS.markdown:
        with open(FLAGS.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    if FLAGS.json:
        with open(FLAGS.json, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "summary": table}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
