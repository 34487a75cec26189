"""ANN backends against exact search on an export's real item and user embeddings.

Usage:
  python benchmarks/retrieval.py --output_dir=/tmp/bx --queries=1000 [--markdown=out.md]
      [--params='{"faiss-ivfpq": {"nprobe": 64}}']

For each installed backend, measured in one run against exact search: recall@k (tie-aware: a returned
item counts when its exact score reaches the k-th best exact score), queries per second for single
queries and for one batch, single-query p50/p99 latency (candidates + exact re-ranking), build time and
index memory; then `Recommender.recommend` latency for single users in process.
"""

import io
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

import tte_tfrs  # noqa: F401
from tte_tfrs.retrieval import ItemIndex, get_backend, installed_backends
from tte_tfrs.serving.recommender import Recommender

flags.DEFINE_string("output_dir", None, "Export root with at least a few hundred thousand items.")
flags.DEFINE_integer("queries", 1000, "Users sampled as queries.")
flags.DEFINE_integer("single_queries", 300, "Queries timed one at a time.")
flags.DEFINE_integer("k", 10, "Results per query.")
flags.DEFINE_list("backends", None, "Backends to measure (default: every installed one).")
flags.DEFINE_string("params", "{}", "JSON: backend -> {build or search setting: value}.")
flags.DEFINE_string("markdown", None, "Also write the Markdown table here.")
flags.DEFINE_integer("seed", 0, "Query sample seed.")
FLAGS = flags.FLAGS


def index_memory(index):
    with tempfile.TemporaryDirectory() as folder:
        index.backend.save(folder)
        return sum(os.path.getsize(os.path.join(root, f))
                   for root, _, files in os.walk(folder) for f in files)


def tie_aware_recall(scores, truth_scores):
    kth = truth_scores[:, -1:] - 1e-5 * np.maximum(1.0, np.abs(truth_scores[:, -1:]))
    hits = np.minimum((scores >= kth).sum(axis=1), truth_scores.shape[1])
    return float(np.mean(hits / truth_scores.shape[1]))


def time_single(index, queries, k):
    latencies = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None, :], k)
        latencies.append(time.perf_counter() - started)
    latencies = np.asarray(latencies)
    return {"single_qps": float(len(latencies) / latencies.sum()),
            "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(latencies, 99) * 1e3)}


def time_batch(index, queries, k):
    started = time.perf_counter()
    scores, _ = index.search(queries, k)
    return scores, float(len(queries) / (time.perf_counter() - started))


def main(argv):
    del argv
    recommender = Recommender.load(FLAGS.output_dir, backend="exact")
    embeddings, ids = recommender.reader.item_table.embeddings, recommender.reader.item_table.ids
    rng = np.random.default_rng(FLAGS.seed)
    users = rng.choice(recommender.users_with_ratings, FLAGS.queries, replace=False)
    requests = [recommender.user_features(u) for u in users]
    queries = np.concatenate([recommender.user_embeddings(requests[i:i + 256])
                              for i in range(0, len(requests), 256)])
    k = FLAGS.k
    overrides = json.loads(FLAGS.params)
    rows = []
    exact = recommender.index
    truth_scores, exact_qps = time_batch(exact, queries, k)
    single = time_single(exact, queries[:FLAGS.single_queries // 3], k)
    rows.append({"backend": "exact", "build_s": 0.0, "memory_mb": embeddings.nbytes / 2**20,
                 "recall": 1.0, "batch_qps": exact_qps, **single, "params": {}})
    print(json.dumps(rows[-1]), flush=True)
    for name in FLAGS.backends or [b for b in installed_backends() if b != "exact"]:
        params = overrides.get(name, {})
        backend_class = get_backend(name)
        build_defaults, search_defaults = backend_class.default_params(*embeddings.shape)
        build = {key: v for key, v in params.items() if key in build_defaults}
        search = {key: v for key, v in params.items() if key in search_defaults}
        started = time.perf_counter()
        index = ItemIndex.build(embeddings, ids, name, build, search)
        build_seconds = time.perf_counter() - started
        scores, batch_qps = time_batch(index, queries, k)
        label = name if index.name == name else f"{name} (too few items: {index.name})"
        row = {"backend": label, "build_s": build_seconds, "memory_mb": index_memory(index) / 2**20,
               "recall": tie_aware_recall(scores, truth_scores), "batch_qps": batch_qps,
               **time_single(index, queries[:FLAGS.single_queries], k),
               "params": {**index.backend.build_params, **index.backend.search_params}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    default = Recommender.load(FLAGS.output_dir)
    latencies = []
    for user in users[:FLAGS.single_queries]:
        started = time.perf_counter()
        default.recommend(str(user), k=k)
        latencies.append(time.perf_counter() - started)
    recommend = {"backend": default.index.name, "p50_ms": float(np.percentile(latencies, 50) * 1e3),
                 "p99_ms": float(np.percentile(latencies, 99) * 1e3)}
    print(json.dumps({"recommend": recommend}), flush=True)

    out = io.StringIO()
    out.write(f"Catalogue: {len(ids):,} items, dimension {embeddings.shape[1]}, {len(queries):,} "
              f"real users as queries, k = {k}. Machine: {platform.machine()} {platform.system()}, "
              f"Python {platform.python_version()}. Command: python {' '.join(sys.argv)}\n\n")
    out.write(f"| backend | recall@{k} | batch QPS | × exact | single QPS | × exact | p50 ms | p99 ms "
              "| build s | index MB | settings |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    for row in rows:
        settings = ", ".join(f"{a}={b:g}" if isinstance(b, float) else f"{a}={b}"
                             for a, b in row["params"].items())
        out.write(f"| {row['backend']} | {row['recall']:.3f} | {row['batch_qps']:,.0f} | "
                  f"{row['batch_qps'] / rows[0]['batch_qps']:.1f} | {row['single_qps']:,.0f} | "
                  f"{row['single_qps'] / rows[0]['single_qps']:.1f} | {row['p50_ms']:.2f} | "
                  f"{row['p99_ms']:.2f} | {row['build_s']:.1f} | {row['memory_mb']:.1f} | "
                  f"{settings} |\n")
    out.write(f"\n`Recommender.recommend` (single user, k = {k}, {recommend['backend']} index, user "
              f"tower + search + re-ranking + exclusion): p50 {recommend['p50_ms']:.2f} ms, p99 "
              f"{recommend['p99_ms']:.2f} ms.\n")
    print(out.getvalue())
    if FLAGS.markdown:
        with open(FLAGS.markdown, "w", encoding="utf-8") as f:
            f.write(out.getvalue())


if __name__ == "__main__":
    flags.mark_flag_as_required("output_dir")
    app.run(main)
