"""The cost curve: time and peak memory of every stage as the ratings grow, in memory and streamed.

Usage:
  python benchmarks/scale.py --data_root=/tmp/scale --sizes=1000000,5000000,20000000 \\
      --memory_sizes=1000000,5000000 --workers_size=1000000 --json=/tmp/scale/results.json

For each size N the generator writes N ratings (N/10 users, 3N/20 books, seed 13; the data stays
in --data_root, made once) and one fresh process per run measures, for the streaming path (and
for the in-memory path at --memory_sizes, its peer in the same run):

  read      reading and cleaning the files (streaming: chunks on disk, codes, counts)
  vocab     split, training counts and vocabularies (in memory: split, join, vocabularies)
  convert   preprocessing and writing the shard files (in memory: preprocessing once)
  epoch     the training steps of one epoch after the first (which also traces), examples/s
  export    the export (SavedModels, item embeddings, users, who rated what)
  index     tte-index's default backend over the exported items
  recommend Recommender.recommend p50 over 200 known users

Peak memory is the largest resident set size sampled every 20 ms during the stage (the process's
peak so far is also given). Reading, training and the export run in one process (as tte-train
does); the index and the recommend timing in a second one (as tte-index and a serving process do),
so each stage's peak is its own process's; the process peak is the larger of the two.
--workers_size also trains on 2 multi-worker processes on this machine (loopback) next to 1
process, same data and settings.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

flags.DEFINE_string("data_root", "/tmp/tte-scale", "Where the generated data sets are kept.")
flags.DEFINE_list("sizes", ["1000000", "5000000", "20000000"], "Ratings per data set.")
flags.DEFINE_list("memory_sizes", ["1000000"], "Sizes also run on the in-memory path.")
flags.DEFINE_string("workers_size", "1000000", "Size for 1 vs 2 multi-worker processes ('' skips).")
flags.DEFINE_integer("epochs", 2, "Epochs per run (the first traces; the second is timed).")
flags.DEFINE_string("json", None, "Write all results here too.")
flags.DEFINE_string("run", None, "Internal: one run as JSON {mode, size, ...}.")
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Peak:
    """Samples this process's resident set size in a thread; `stage` reports the peak of each."""

    def __init__(self):
        self.current = self.peak = 0
        self._stop = False
        threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _sample(self):
        while not self._stop:
            self.current = self.rss()
            self.peak = max(self.peak, self.current)
            time.sleep(0.02)

    def stage(self, name, results, fn):
        self.peak = self.rss()
        started = time.perf_counter()
        value = fn()
        results[name] = {"seconds": round(time.perf_counter() - started, 2),
                         "peak_mb": round(max(self.peak, self.rss()) / 2**20)}
        return value


def generate(size):
    from tte_tfrs.data.synthetic import SyntheticConfig, write_bookcrossing
    folder = os.path.join(FLAGS.data_root, f"bx-{size}")
    if not os.path.exists(os.path.join(folder, "Ratings.csv")):
        staged = folder + ".tmp"
        started = time.perf_counter()
        write_bookcrossing(staged, SyntheticConfig(n_users=size // 10, n_items=size * 3 // 20,
                                                   n_interactions=size, seed=13))
        os.rename(staged, folder)
        print(f"generated {size:,} ratings in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def one_run(spec):
    """Runs the stages of one configuration in this process; returns their measurements."""
    import tte_tfrs  # noqa: F401
    from tte_tfrs.data import streaming
    from tte_tfrs.data.loader import load_dataset
    from tte_tfrs.exports.writer import export
    from tte_tfrs.training import scaled, trainer
    from tte_tfrs.training.config import TrainConfig

    peak = Peak()
    out = {"run": spec, "stages": {}}
    stages = out["stages"]
    config = TrainConfig(data_dir=spec["data"], epochs=FLAGS.epochs, early_stopping_patience=0,
                         input_mode=spec["mode"], verbose=0,
                         streaming_dir=os.path.join(spec["work"], "stream"))
    if spec["mode"] == "streaming":
        data = peak.stage("read", stages, lambda: streaming.read_streamed(
            config.data_dir, work_dir=config.streaming_dir))
    else:
        data = peak.stage("read", stages, lambda: load_dataset(config.data_dir))
    # Training is one call; its stages are timed inside by wrapping the functions it calls.
    timings = {}

    def timed(module, name, label):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            peak.peak = peak.rss()
            started = time.perf_counter()
            value = original(*args, **kwargs)
            seconds = time.perf_counter() - started
            previous = timings.get(label, {"seconds": 0.0, "peak_mb": 0})
            timings[label] = {"seconds": round(previous["seconds"] + seconds, 2),
                              "peak_mb": max(previous["peak_mb"], round(peak.peak / 2**20))}
            return value
        setattr(module, name, wrapper)

    from tte_tfrs.data import tfdata
    from tte_tfrs.training import streamed
    if spec["mode"] == "streaming":
        for name in ("training_counts", "side_tables", "streamed_vocabularies"):
            timed(streamed, name, "vocab")
        timed(streamed, "write_streamed", "convert")
    else:
        timed(trainer, "start", "vocab")
        timed(trainer, "build_model", "vocab")
        timed(tfdata, "preprocess_columns", "convert")
    peak.peak = peak.rss()
    started = time.perf_counter()
    result = trainer.train(config, data) if spec["mode"] == "memory" else scaled.train(config, data)
    stages.update(timings)
    stages["train_total"] = {"seconds": round(time.perf_counter() - started, 2),
                             "peak_mb": round(peak.peak / 2**20)}
    metrics = result.metrics
    stages["epoch"] = {"examples_per_second": metrics["epoch_examples_per_second"],
                       "seconds": round(result.splits.sizes()["train"]
                                        / metrics["epoch_examples_per_second"], 2)}
    output_dir = os.path.join(spec["work"], "models")
    trained = [result]          # freed after the export
    del result
    exported = peak.stage("export", stages, lambda: export(trained.pop(), output_dir))
    if hasattr(data, "close"):
        data.close()
    out["metrics"] = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    out["counts"] = exported.manifest["dataset"]["counts"]
    out["splits"] = exported.manifest["dataset"]["splits"]
    out["peak_mb_process"] = round(_max_rss() / 2**20)
    return out


def serve_run(spec):
    """tte-index and the recommend timing over the export of `spec`, in a process of their own
    (as the index script and a serving process run them)."""
    import numpy as np

    import tte_tfrs  # noqa: F401
    from tte_tfrs.retrieval.building import build_index
    from tte_tfrs.serving.recommender import Recommender

    peak = Peak()
    out = {"stages": {}}
    stages = out["stages"]
    output_dir = os.path.join(spec["work"], "models")
    # Only the metadata is kept: the built index and its tables go before the recommender loads.
    out["index"] = peak.stage("index", stages, lambda: build_index(output_dir)[1])
    recommender = Recommender.load(output_dir)
    ids = _known_users(output_dir, 200)
    latencies = []

    def recommend_all():
        for user in ids:
            started = time.perf_counter()
            recommender.recommend(user_id=user, k=10)
            latencies.append(time.perf_counter() - started)

    peak.stage("recommend", stages, recommend_all)
    stages["recommend"]["p50_ms"] = round(1000 * float(np.median(latencies[20:] or latencies)), 2)
    out["peak_mb_process"] = round(_max_rss() / 2**20)
    return out


def _known_users(output_dir, n):
    import numpy as np
    with np.load(os.path.join(output_dir, "users", "1", "rated.npz")) as rated:
        ids = rated["user_ids"]
    return [str(x) for x in np.random.default_rng(0).choice(ids, min(n, len(ids)), replace=False)]


def _max_rss():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def subprocess_run(spec):
    done = subprocess.run([sys.executable, os.path.abspath(__file__), f"--run={json.dumps(spec)}"],
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"))
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"run {spec} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def workers_run(data, work, workers):
    """`tte-train --strategy=multi_worker` on `workers` processes here (loopback)."""
    ports = []
    for _ in range(workers):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    output_dir = os.path.join(work, f"models-{workers}")
    processes = []
    started = time.perf_counter()
    for index in range(workers):
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            ["/usr/bin/time", "-f", "MAXRSS %M", sys.executable, "-m", "tte_tfrs.scripts.train",
             f"--data_dir={data}", f"--output_dir={output_dir}", "--strategy=multi_worker",
             f"--epochs={FLAGS.epochs}", "--early_stopping_patience=0", "--input_mode=streaming",
             f"--streaming_dir={os.path.join(work, f'stream-{index}')}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT))
    logs = [p.communicate()[0] for p in processes]
    seconds = time.perf_counter() - started
    if any(p.returncode for p in processes):
        raise RuntimeError("\n".join(log[-3000:] for log in logs))
    with open(os.path.join(output_dir, "manifest.json")) as f:
        manifest = json.load(f)
    rss = [int(line.split()[1]) for log in logs for line in log.splitlines()
           if line.startswith("MAXRSS")]
    return {"workers": workers, "wall_seconds": round(seconds, 1), "metrics": manifest["metrics"],
            "peak_mb_per_worker": [round(r / 1024) for r in rss]}


def markdown(results):
    lines = ["| ratings | path | read s / MB | vocab s / MB | convert s / MB | epoch s (examples/s) | "
             "export s / MB | index s | recommend p50 ms | process peak MB (train / index) | test RMSE |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.get("runs", []):
        s = r["stages"]

        def cell(name, s=s):
            return f"{s[name]['seconds']} / {s[name]['peak_mb']:,}" if name in s else "–"
        lines.append(
            f"| {r['run']['size']:,} | {r['run']['mode']} | {cell('read')} | {cell('vocab')} | "
            f"{cell('convert')} | {s['epoch']['seconds']} ({s['epoch']['examples_per_second']:,}) | "
            f"{cell('export')} | {s['index']['seconds']} | {s['recommend']['p50_ms']} | "
            f"{_process_peaks(r)} | {r['metrics'].get('test_rmse', float('nan')):.4f} |")
    if results.get("workers"):
        lines += ["", "| processes | wall s | epoch examples/s (cluster) | validation RMSE | "
                  "test RMSE | peak MB per process |", "|---|---|---|---|---|---|"]
        for w in results["workers"]:
            m = w["metrics"]
            lines.append(f"| {w['workers']} | {w['wall_seconds']} | "
                         f"{m['epoch_examples_per_second']:,} | {m['validation_rmse']:.4f} | "
                         f"{m['test_rmse']:.4f} | {', '.join(f'{x:,}' for x in w['peak_mb_per_worker'])} |")
    return "\n".join(lines)


def _process_peaks(run):
    if "peak_mb_serve_process" not in run:
        return f"{run['peak_mb_process']:,}"
    return f"{run['peak_mb_train_process']:,} / {run['peak_mb_serve_process']:,}"


def main(argv):
    del argv
    if FLAGS.run:
        spec = json.loads(FLAGS.run)
        result = serve_run(spec) if spec["mode"] == "serve" else one_run(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return
    import shutil
    results = {"machine": f"{os.cpu_count()} cores, {platform.machine()}, Python "
                          f"{platform.python_version()}", "runs": [], "workers": []}
    for size in (int(s) for s in FLAGS.sizes):
        data = generate(size)
        modes = ["streaming"] + (["memory"] if str(size) in FLAGS.memory_sizes else [])
        for mode in modes:
            work = os.path.join(FLAGS.data_root, f"work-{size}-{mode}")
            shutil.rmtree(work, ignore_errors=True)
            run = subprocess_run({"mode": mode, "size": size, "data": data, "work": work})
            serve = subprocess_run({"mode": "serve", "work": work})
            shutil.rmtree(work, ignore_errors=True)
            run["stages"].update(serve["stages"])
            run["index"] = serve["index"]
            run["peak_mb_train_process"] = run["peak_mb_process"]
            run["peak_mb_serve_process"] = serve["peak_mb_process"]
            run["peak_mb_process"] = max(run["peak_mb_process"], serve["peak_mb_process"])
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    if FLAGS.workers_size:
        data = generate(int(FLAGS.workers_size))
        for workers in (1, 2):
            work = os.path.join(FLAGS.data_root, f"work-workers-{workers}")
            shutil.rmtree(work, ignore_errors=True)
            results["workers"].append(workers_run(data, work, workers))
            shutil.rmtree(work, ignore_errors=True)
            print(json.dumps(results["workers"][-1]), flush=True)
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(results, f, indent=1)
    print(markdown(results))


if __name__ == "__main__":
    app.run(main)
