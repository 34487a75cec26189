"""Every retrieval backend, with its default (calibrated) settings, against fast exact search.

Usage:
  python benchmarks/retrieval.py --export=/tmp/bx --label="Book-Crossing implicit" --json=out.jsonl
  python benchmarks/retrieval.py --synthetic=1000000 --json=out.jsonl
  python benchmarks/retrieval.py --export=/tmp/bx --pad_to=1000000 --recommend --backends=faiss-ivfpq
  python benchmarks/retrieval.py --report=out.jsonl          # the Markdown table of all runs

One catalogue per run: an export (its item embeddings; queries are its own user tower over known
users) or a synthetic tower-shaped catalogue (`tte_tfrs.retrieval.synthetic`; queries from the same
generator). Each backend is built with its default build settings and calibrated as `tte-index` does
(target recall@10 0.95 on 1,000 calibration queries: known users with seed 0, or generated users);
then it is measured on *other* queries (seed 1 users / generated users of another seed):

- recall@k after exact re-ranking (what `recommend` returns), tie-aware: a returned item counts when
  its exact score reaches the k-th best exact score (the scores are bit-identical on every path);
- single queries, one at a time, on one thread (OMP/BLAS/FAISS set to 1 before anything is timed):
  QPS, p50 and p99 of `ItemIndex.search` (candidates + exact re-ranking), and the ratio against fast
  exact search measured the same way in the same run;
- one batch of all queries (QPS, for reference), build and calibration seconds, the saved index size
  and the growth of the process's resident memory while building.

Fast exact search (`ExactBackend`: one BLAS product, a sampled bound of the k-th score + exact
re-ranking) is the baseline; the previous exact backend (numpy matrix product in blocks of 8 queries
+ a full top-k per row) is measured too, for comparison.

`--pad_to=N` copies the export and appends tower-shaped items (ids sorting after the real ones)
until the catalogue has N items, so `Recommender.recommend` (`--recommend`: user tower + search +
re-ranking + exclusion of rated items) can be timed on a real export at that size.
"""

import os

# Per-query numbers are single-threaded: fix the thread pools before numpy/FAISS/TF start.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import tte_tfrs  # noqa: E402,F401
from tte_tfrs.exports.reader import ExportReader  # noqa: E402
from tte_tfrs.retrieval import ItemIndex, installed_backends  # noqa: E402
from tte_tfrs.retrieval.calibration import CalibrationConfig, calibrate, exact_truth  # noqa: E402
from tte_tfrs.retrieval.scoring import tie_aware_recall, top_k_rows  # noqa: E402
from tte_tfrs.retrieval.synthetic import tower_shaped_items, tower_shaped_users  # noqa: E402

flags.DEFINE_string("export", None, "An export root: its catalogue, its user tower as queries.")
flags.DEFINE_integer("synthetic", None, "Instead: a tower-shaped catalogue of this many items.")
flags.DEFINE_integer("pad_to", None, "Pad the export's catalogue with tower-shaped items to N.")
flags.DEFINE_string("label", None, "Name of the catalogue in the table.")
flags.DEFINE_list("backends", None, "Backends (default: every installed one).")
flags.DEFINE_integer("queries", 1000, "Measurement queries (recall, batch QPS).")
flags.DEFINE_integer("single_queries", 300, "Queries timed one at a time.")
flags.DEFINE_integer("slow_single_queries", 20, "Queries timed one at a time for milvus (Lite).")
flags.DEFINE_integer("k", 10, "Results per query.")
flags.DEFINE_float("target_recall", 0.95, "Calibration target.")
flags.DEFINE_integer("build_threads", 2, "Threads for building and ground truth (timing uses 1).")
flags.DEFINE_bool("recommend", False, "Also time Recommender.recommend with the default backend.")
flags.DEFINE_bool("old_exact", True, "Also time the previous numpy exact backend.")
flags.DEFINE_string("json", None, "Append one JSON line per row here.")
flags.DEFINE_string("report", None, "Only print the Markdown table of the rows in this JSON file.")
flags.DEFINE_string("work_dir", None, "Scratch folder (default: a temporary one).")
FLAGS = flags.FLAGS


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def set_threads(count):
    import faiss
    faiss.omp_set_num_threads(count)


def saved_mb(index):
    folder = tempfile.mkdtemp(prefix="tte-bench-size-")
    try:
        index.backend.save(folder)
        return sum(os.path.getsize(os.path.join(root, f))
                   for root, _, files in os.walk(folder) for f in files) / 2**20
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def time_single(search, queries):
    for query in queries[:5]:
        search(query[None, :])
    latencies = []
    for query in queries:
        started = time.perf_counter()
        search(query[None, :])
        latencies.append(time.perf_counter() - started)
    latencies = np.asarray(latencies)
    return {"single_qps": float(len(latencies) / latencies.sum()),
            "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(latencies, 99) * 1e3)}


def old_numpy_exact(embeddings, k):
    """The previous exact backend: numpy products in blocks of 8 queries, full top-k per row."""
    def search(queries):
        out = []
        for start in range(0, len(queries), 8):
            block = queries[start:start + 8] @ embeddings.T
            out.append(top_k_rows(block, k))
        return np.concatenate(out)
    return search


def padded_export(source, count, work):
    """A copy of the export whose catalogue is padded with tower-shaped items to `count`."""
    target = os.path.join(work, "padded")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("index", "logs", "checkpoint"))
    reader = ExportReader(target)
    folder = reader.folder("item_embeddings")
    table = reader.item_table
    extra = count - len(table.ids)
    added = tower_shaped_items(extra, seed=99)
    added[:, :-2] *= float(np.median(np.linalg.norm(table.embeddings[:, :-2], axis=1))) / float(
        np.median(np.linalg.norm(added[:, :-2], axis=1)))
    width = len(str(extra))
    new_ids = [f"~pad-{n:0{width}d}" for n in range(extra)]      # "~" sorts after ISBNs
    np.save(os.path.join(folder, "embeddings.npy"), np.concatenate([table.embeddings, added]))
    with open(os.path.join(folder, "item_ids.txt"), "a", encoding="utf-8", newline="\n") as f:
        f.write("".join(f"{i}\n" for i in new_ids))
    with open(os.path.join(folder, "items.csv"), "a", encoding="utf-8") as f:
        columns = list(table.items.columns)
        f.write("".join(",".join([i] + [""] * (len(columns) - 1)) + "\n" for i in new_ids))
    for path in (os.path.join(target, "manifest.json"),
                 os.path.join(target, "manifests", f"{reader.version}.json")):
        manifest = json.load(open(path))
        manifest["item_embeddings"]["count"] = count
        json.dump(manifest, open(path, "w"), indent=2)
    return target


def catalogue(work):
    """(label, embeddings, ids, calibration queries + sources, measurement queries, export or None)."""
    if FLAGS.synthetic:
        n = FLAGS.synthetic
        items = tower_shaped_items(n, seed=0)
        return (FLAGS.label or f"synthetic {n:,}", items, np.arange(n),
                (tower_shaped_users(1000, seed=1), {"generated": 1000}),
                tower_shaped_users(FLAGS.queries, seed=2), None)
    from tte_tfrs.retrieval.building import user_queries
    root = FLAGS.export
    if FLAGS.pad_to:
        root = padded_export(root, FLAGS.pad_to, work)
    reader = ExportReader(root)
    table = reader.item_table
    calibration = user_queries(reader, 1000, seed=0)
    measured, _ = user_queries(reader, FLAGS.queries, seed=1)
    return (FLAGS.label or root, table.embeddings, table.ids, calibration, measured, root)


def bench(work):
    label, embeddings, ids, (cal_queries, cal_sources), queries, root = catalogue(work)
    k = FLAGS.k
    rows = []

    def emit(row):
        row = {"catalogue": label, "items": int(len(ids)), **row}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if FLAGS.json:
            with open(FLAGS.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    set_threads(FLAGS.build_threads)
    started = time.perf_counter()
    exact = ItemIndex.build(embeddings, ids, "exact")
    truth = exact_truth(embeddings, queries, k)
    truth_seconds = time.perf_counter() - started
    set_threads(1)
    single = time_single(lambda q: exact.search(q, k), queries[:max(50, FLAGS.single_queries // 3)])
    started = time.perf_counter()
    exact.search(queries, k)
    batch_qps = len(queries) / (time.perf_counter() - started)
    baseline = single["single_qps"]
    emit({"backend": "exact (fast)", "recall": 1.0, **single, "batch_qps": batch_qps,
          "build_s": 0.0, "calibration_s": 0.0, "index_mb": embeddings.nbytes / 2**20,
          "rss_mb": 0.0, "x_exact": 1.0, "settings": "BLAS product + sampled k-th bound",
          "truth_s": truth_seconds})
    if FLAGS.old_exact:
        old = old_numpy_exact(embeddings, k)
        single_old = time_single(old, queries[:max(30, FLAGS.single_queries // 10)])
        emit({"backend": "exact (previous, numpy)", "recall": 1.0, **single_old,
              "batch_qps": None, "build_s": 0.0, "calibration_s": 0.0,
              "index_mb": embeddings.nbytes / 2**20, "rss_mb": 0.0,
              "x_exact": single_old["single_qps"] / baseline, "settings": "numpy, blocks of 8"})
    for name in FLAGS.backends or [b for b in installed_backends() if b != "exact"]:
        set_threads(FLAGS.build_threads)
        before = rss_mb()
        started = time.perf_counter()
        index = ItemIndex.build(embeddings, ids, name)
        build_seconds = time.perf_counter() - started
        grown = rss_mb() - before
        started = time.perf_counter()
        record = calibrate(index, cal_queries, CalibrationConfig(target_recall=FLAGS.target_recall,
                                                                 k=k), query_sources=cal_sources)
        calibration_seconds = time.perf_counter() - started
        set_threads(1)
        started = time.perf_counter()
        scores = np.concatenate([index.search(queries[s:s + 256], k)[0]
                                 for s in range(0, len(queries), 256)])
        batch_qps = len(queries) / (time.perf_counter() - started)
        timed = FLAGS.slow_single_queries if name == "milvus" else FLAGS.single_queries
        single = time_single(lambda q, index=index: index.search(q, k), queries[:timed])
        params = {**index.backend.build_params, **index.backend.search_params,
                  "rerank": index.rerank}
        params.pop("seed", None)
        params.pop("max_norm", None)
        emit({"backend": name if index.name == name else f"{name} (too few items: exact)",
              "recall": float(tie_aware_recall(scores, truth).mean()), **single,
              "batch_qps": batch_qps, "build_s": build_seconds,
              "calibration_s": calibration_seconds, "index_mb": saved_mb(index), "rss_mb": grown,
              "x_exact": single["single_qps"] / baseline,
              "calibrated_recall": record["recall"], "reached": record["reached"],
              "settings": ", ".join(f"{a}={b:g}" if isinstance(b, float) else f"{a}={b}"
                                    for a, b in params.items() if b != "")})
        index.backend.close()
    if FLAGS.recommend and root is not None:
        recommend_p50(root, emit)


def recommend_p50(root, emit):
    """`Recommender.recommend` for single known users with the default index, built by tte-index's
    library call (default settings, calibrated)."""
    from tte_tfrs.retrieval.building import build_index
    from tte_tfrs.serving.recommender import Recommender

    set_threads(FLAGS.build_threads)
    index, _ = build_index(root)
    index.backend.close()
    set_threads(1)
    recommender = Recommender.load(root)
    rng = np.random.default_rng(5)
    users = rng.choice(recommender.users_with_ratings, FLAGS.single_queries, replace=False)
    for user in users[:5]:
        recommender.recommend(str(user), k=FLAGS.k)
    latencies = []
    for user in users:
        started = time.perf_counter()
        recommender.recommend(str(user), k=FLAGS.k)
        latencies.append(time.perf_counter() - started)
    emit({"backend": f"Recommender.recommend ({recommender.index.name})",
          "p50_ms": float(np.percentile(latencies, 50) * 1e3),
          "p99_ms": float(np.percentile(latencies, 99) * 1e3),
          "single_qps": float(len(latencies) / np.sum(latencies))})


def fmt(value, spec):
    return "–" if value is None else format(value, spec)


def report(path):
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    out = io.StringIO()
    out.write(f"Machine: {platform.machine()} {platform.system()}, Python "
              f"{platform.python_version()}, {os.cpu_count()} cores; per-query numbers on one "
              "thread.\n\n")
    out.write("| catalogue | items | backend | recall@10 | single QPS | × fast exact | p50 ms | "
              "p99 ms | batch QPS | build s | calibrate s | index MB | RSS +MB | settings "
              "(calibrated) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        if r["backend"].startswith("Recommender"):
            out.write(f"| {r['catalogue']} | {r['items']:,} | {r['backend']} | – | "
                      f"{r['single_qps']:,.0f} | – | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | – | – "
                      "| – | – | – | – |\n")
            continue
        out.write(f"| {r['catalogue']} | {r['items']:,} | {r['backend']} | {r['recall']:.3f} | "
                  f"{r['single_qps']:,.0f} | {r['x_exact']:.1f} | {r['p50_ms']:.3f} | "
                  f"{r['p99_ms']:.3f} | {fmt(r.get('batch_qps'), ',.0f')} | {r['build_s']:.1f} | "
                  f"{r['calibration_s']:.1f} | {r['index_mb']:.1f} | {r['rss_mb']:.0f} | "
                  f"{r['settings']} |\n")
    print(out.getvalue())


def main(argv):
    del argv
    if FLAGS.report:
        report(FLAGS.report)
        return
    if not (FLAGS.export or FLAGS.synthetic):
        raise app.UsageError("give --export or --synthetic (or --report)")
    print(f"python {' '.join(sys.argv)}", flush=True)
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="tte-bench-")
    try:
        bench(work)
    finally:
        if not FLAGS.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
