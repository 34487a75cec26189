"""tte-serve under load: the real server process against a real load generator (locust), next to
in-process `Recommender.recommend` on the same users, in one run; then a new version exported and
rolled back under load, checking every answer; then schemathesis against the OpenAPI schema.

Usage:
  python benchmarks/serve_load.py --output_dir=/tmp/bx [--duration_s=20] [--concurrency=1,8,32]
      [--server_cpus=0] [--client_cpus=1] [--markdown=out.md] [--json=out.json]

The export is copied first (the original is never changed). The server (`tte-serve`, uvicorn) is
pinned to --server_cpus and locust to --client_cpus with taskset, so they do not compete for a
core; the in-process baseline runs pinned to --server_cpus as well. Every answer is recorded and
compared with the in-process answer of the version it names (same item ids, scores within 1e-5):
"wrong" counts those that differ. Everything binds to 127.0.0.1 and every child process is
bounded in time.

Roles used internally (each a subprocess): --role=inprocess (baseline latency and the expected
answers of the current version), --role=writer (trains a second model before the load, then, when
told, exports it into the served folder and builds its index, under the load).
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCUSTFILE = os.path.join(ROOT, "benchmarks", "serve_locustfile.py")

flags.DEFINE_string("output_dir", None, "Export root (a Book-Crossing-size export with an index).")
flags.DEFINE_string("backend", "faiss-ivfpq", "Retrieval backend (its saved index is used).")
flags.DEFINE_list("concurrency", ["1", "8", "32"], "Locust users (closed loop) per run.")
flags.DEFINE_integer("duration_s", 20, "Seconds of load per concurrency (the first "
                     "--warmup_s are not counted).")
flags.DEFINE_float("warmup_s", 3.0, "Seconds at the start of each run left out of the numbers.")
flags.DEFINE_integer("users", 2000, "Known users sampled as requests.")
flags.DEFINE_integer("k", 10, "Items per recommendation.")
flags.DEFINE_integer("swap_concurrency", 32, "Locust users during the export and rollback.")
flags.DEFINE_integer("writer_epochs", 2, "Epochs of the second model (exported under load).")
flags.DEFINE_integer("schemathesis_examples", 100, "Schemathesis examples per operation.")
flags.DEFINE_string("server_cpus", "0", "taskset CPU list of the server (and the baseline).")
flags.DEFINE_string("client_cpus", "1", "taskset CPU list of locust.")
flags.DEFINE_integer("seed", 0, "User sample seed.")
flags.DEFINE_string("work_dir", None, "Scratch folder (default: a new temporary one).")
flags.DEFINE_string("markdown", None, "Also write the Markdown table here.")
flags.DEFINE_string("json", None, "Also write every number here.")
flags.DEFINE_enum("role", "orchestrate", ["orchestrate", "inprocess", "writer"], "Internal.")
flags.DEFINE_string("users_file", None, "Internal: the sampled users (JSON).")
flags.DEFINE_string("answers_out", None, "Internal: where a role writes its expected answers.")
FLAGS = flags.FLAGS


def env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
                TF_CPP_MIN_LOG_LEVEL="2")


def answers_of(recommender, users, k):
    """{user: [ids, scores]} from in-process recommend_batch, in chunks."""
    out = {}
    for start in range(0, len(users), 256):
        chunk = users[start:start + 256]
        for user, recs in zip(chunk, recommender.recommend_batch(chunk, k=k)):
            out[user] = [[r.item_id for r in recs], [r.score for r in recs]]
    return out


# ---- roles ----------------------------------------------------------------------------------

def role_inprocess():
    """Baseline: single-user `recommend` latency in this (pinned) process, and expected answers."""
    import tte_tfrs  # noqa: F401
    from tte_tfrs.serving.recommender import Recommender
    recommender = Recommender.load(FLAGS.output_dir, backend=FLAGS.backend,
                                   build_if_missing=True)
    rng = np.random.default_rng(FLAGS.seed)
    pool = recommender.users_with_ratings
    users = [str(u) for u in rng.choice(pool, size=min(FLAGS.users, len(pool)), replace=False)]
    with open(FLAGS.users_file, "w") as f:
        json.dump(users, f)
    for user in users[:50]:                                   # warm-up
        recommender.recommend(user, k=FLAGS.k)
    latencies = []
    started = time.perf_counter()
    for user in users:
        t = time.perf_counter()
        recommender.recommend(user, k=FLAGS.k)
        latencies.append(time.perf_counter() - t)
    single_wall = time.perf_counter() - started
    batch = 32
    started = time.perf_counter()
    for start in range(0, len(users) - batch + 1, batch):
        recommender.recommend_batch(users[start:start + batch], k=FLAGS.k)
    batched = (len(users) // batch * batch) / (time.perf_counter() - started)
    lat = np.asarray(latencies) * 1e3
    result = {"version": recommender.version, "backend": recommender.index.name,
              "items": recommender.catalogue_size, "users": len(users),
              "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
              "per_s": len(users) / single_wall, "batch32_per_s": batched,
              "answers": {str(recommender.version): answers_of(recommender, users, FLAGS.k)}}
    with open(FLAGS.answers_out, "w") as f:
        json.dump(result, f)


def role_writer():
    """Trains a second model now; on a line on stdin exports it into the served folder and builds
    its index (under the load), then writes the new version's expected answers."""
    import tte_tfrs  # noqa: F401
    from tte_tfrs.exports.reader import ExportReader
    from tte_tfrs.exports.writer import export
    from tte_tfrs.retrieval.building import build_index
    from tte_tfrs.serving.recommender import Recommender
    from tte_tfrs.training.config import TrainConfig
    from tte_tfrs.training.trainer import train
    config = TrainConfig.from_dict(dict(ExportReader(FLAGS.output_dir).manifest["config"],
                                        epochs=FLAGS.writer_epochs, seed=FLAGS.seed + 1,
                                        early_stopping_patience=0))
    logging.set_verbosity(logging.ERROR)
    with contextlib.redirect_stdout(sys.stderr):          # stdout carries only the protocol
        result = train(config)
    say("trained")
    sys.stdin.readline()
    times = {"export_start": time.time()}
    with contextlib.redirect_stdout(sys.stderr):
        version = export(result, FLAGS.output_dir).version
        times["exported"] = time.time()
        build_index(FLAGS.output_dir, FLAGS.backend)
        times["indexed"] = time.time()
    say(json.dumps({"version": version, **times}))
    users = json.load(open(FLAGS.users_file))
    recommender = Recommender.load(FLAGS.output_dir, backend=FLAGS.backend, version=version,
                                   build_if_missing=True)
    with open(FLAGS.answers_out, "w") as f:
        json.dump({str(version): answers_of(recommender, users, FLAGS.k)}, f)
    say("done")


PROTOCOL = "@@ "


def say(line):
    print(PROTOCOL + line, flush=True)


def hear(pipe, what):
    """The writer's next protocol line (other output is passed on)."""
    for line in pipe:
        if line.startswith(PROTOCOL):
            return line[len(PROTOCOL):].strip()
        sys.stderr.write(line)
    raise RuntimeError(f"the writer ended before {what}")


# ---- orchestration --------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:   # noqa: S310 (loopback only)
        return json.load(response)


def readyz(base):
    try:
        return get_json(f"{base}/readyz")
    except Exception:                                                  # noqa: BLE001
        return None


def wait_until(base, holds, what, timeout_s, server=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}) waiting for {what}")
        state = readyz(base)
        if state is not None and holds(state):
            return state
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")


def locust_command(base, users_file, record, concurrency, seconds):
    command = ["taskset", "-c", FLAGS.client_cpus, sys.executable, "-m", "locust", "-f", LOCUSTFILE,
               "--headless", "-u", str(concurrency), "-r", str(concurrency), "-t", f"{seconds}s",
               "--host", base, "--only-summary", "--loglevel", "ERROR", "--stop-timeout", "5"]
    child_env = dict(env(), TTE_USERS=users_file, TTE_RECORD=record, TTE_K=str(FLAGS.k))
    return command, child_env


def read_records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def summarise(records, answers, warmup_s, tail_s=0.5):
    """Throughput and latency in the steady window; failed and wrong answers over all records."""
    failed = sum(1 for r in records if r[2] != 200)
    wrong = 0
    for _, _, status, user, version, ids, scores in records:
        if status != 200:
            continue
        expected = answers.get(str(version), {}).get(user)
        if expected is None or ids != expected[0] or not np.allclose(scores, expected[1],
                                                                     rtol=1e-5, atol=1e-5):
            wrong += 1
    starts = np.asarray([r[0] for r in records])
    ends = starts + np.asarray([r[1] for r in records]) / 1e3
    begin, finish = starts.min() + warmup_s, ends.max() - tail_s
    steady = [r for r, s, e in zip(records, starts, ends) if s >= begin and e <= finish]
    latencies = np.asarray([r[1] for r in steady])
    return {"requests": len(records), "failed": failed, "wrong": wrong,
            "steady_requests": len(steady), "window_s": float(finish - begin),
            "per_s": len(steady) / float(finish - begin),
            "p50_ms": float(np.percentile(latencies, 50)),
            "p90_ms": float(np.percentile(latencies, 90)),
            "p99_ms": float(np.percentile(latencies, 99)),
            "versions": sorted({r[4] for r in records if r[4] is not None})}


def server_stats(base):
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:   # noqa: S310
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(("tte_serve_batch_size_sum", "tte_serve_batch_size_count")):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def orchestrate():
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="tte-serve-bench-")
    os.makedirs(work, exist_ok=True)
    served = os.path.join(work, "models")
    if os.path.exists(served):
        shutil.rmtree(served)
    shutil.copytree(FLAGS.output_dir, served, ignore=shutil.ignore_patterns("logs", ".rolled_back",
                                                                           ".lock"))
    users_file = os.path.join(work, "users.json")
    results = {"command": " ".join(sys.argv), "server_cpus": FLAGS.server_cpus,
               "client_cpus": FLAGS.client_cpus, "runs": []}

    print("in-process baseline ...", flush=True)
    baseline_file = os.path.join(work, "baseline.json")
    subprocess.run(["taskset", "-c", FLAGS.server_cpus, sys.executable, __file__,
                    "--role=inprocess", f"--output_dir={served}", f"--backend={FLAGS.backend}",
                    f"--users={FLAGS.users}", f"--k={FLAGS.k}", f"--seed={FLAGS.seed}",
                    f"--users_file={users_file}", f"--answers_out={baseline_file}"],
                   env=env(), check=True, timeout=900)
    baseline = json.load(open(baseline_file))
    answers = baseline.pop("answers")
    results["inprocess"] = baseline
    print(json.dumps(baseline), flush=True)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    total_bound = 60 + len(FLAGS.concurrency) * (FLAGS.duration_s + 30) + 900
    server = subprocess.Popen(
        ["taskset", "-c", FLAGS.server_cpus, sys.executable, "-m", "tte_tfrs.scripts.serve",
         f"--output_dir={served}", f"--backend={FLAGS.backend}", "--host=127.0.0.1",
         f"--port={port}", "--index_wait_s=600", f"--exit_after_s={total_bound}"],
        env=env(), stderr=open(os.path.join(work, "server.log"), "w"))
    try:
        wait_until(base, lambda s: s["ready"], "the server", 300, server)
        for concurrency in [int(c) for c in FLAGS.concurrency]:
            record = os.path.join(work, f"records-{concurrency}.jsonl")
            before = server_stats(base)
            command, child_env = locust_command(base, users_file, record, concurrency,
                                                FLAGS.duration_s)
            subprocess.run(command, env=child_env, timeout=FLAGS.duration_s + 120,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            after = server_stats(base)
            run = {"concurrency": concurrency,
                   **summarise(read_records(record), answers, FLAGS.warmup_s),
                   "load_average_1m": os.getloadavg()[0]}
            batches = after["tte_serve_batch_size_count"] - before["tte_serve_batch_size_count"]
            run["mean_batch"] = ((after["tte_serve_batch_size_sum"]
                                  - before["tte_serve_batch_size_sum"]) / max(batches, 1))
            results["runs"].append(run)
            print(json.dumps(run), flush=True)

        results["swap"] = swap_run(base, served, users_file, answers, work, server)
        print(json.dumps(results["swap"]), flush=True)
        results["schemathesis"] = schemathesis_run(base, work)
        print(json.dumps(results["schemathesis"]), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    results["load_average_1m_end"] = os.getloadavg()[0]
    table = markdown(results)
    print(table)
    if FLAGS.markdown:
        with open(FLAGS.markdown, "w") as f:
            f.write(table + "\n")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(results, f, indent=2)


def swap_run(base, served, users_file, answers, work, server):
    """Exports a new version and rolls it back while locust keeps --swap_concurrency users busy."""
    from tte_tfrs.exports import lifecycle
    print("training the second model ...", flush=True)
    new_answers_file = os.path.join(work, "answers-new.json")
    writer = subprocess.Popen(
        [sys.executable, __file__, "--role=writer", f"--output_dir={served}",
         f"--backend={FLAGS.backend}", f"--k={FLAGS.k}", f"--seed={FLAGS.seed}",
         f"--writer_epochs={FLAGS.writer_epochs}", f"--users_file={users_file}",
         f"--answers_out={new_answers_file}"],
        env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert hear(writer.stdout, "training") == "trained"
        record = os.path.join(work, "records-swap.jsonl")
        command, child_env = locust_command(base, users_file, record, FLAGS.swap_concurrency, 900)
        load = subprocess.Popen(command, env=child_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        timeline = {"load_start": time.time()}
        time.sleep(5)
        writer.stdin.write("go\n")
        writer.stdin.flush()
        written = json.loads(hear(writer.stdout, "exporting"))
        timeline.update(written)
        new_version = written["version"]
        state = wait_until(base, lambda s: s["version"] == new_version, "the new version", 600,
                           server)
        timeline["serving_new"] = time.time()
        timeline["load_seconds_new"] = state["history"][-1]["seconds"]
        assert hear(writer.stdout, "its answers") == "done"
        writer.wait(60)
        time.sleep(5)
        timeline["rollback"] = time.time()
        rolled_back, current = lifecycle.rollback(served)
        state = wait_until(base, lambda s: s["version"] == current, "the rollback", 600, server)
        timeline["serving_old"] = time.time()
        timeline["load_seconds_old"] = state["history"][-1]["seconds"]
        time.sleep(5)
        load.send_signal(signal.SIGTERM)
        load.wait(60)
    finally:
        if writer.poll() is None:
            writer.kill()
    answers = dict(answers, **json.load(open(new_answers_file)))
    summary = summarise(read_records(record), answers, warmup_s=0.0, tail_s=0.0)
    start = timeline["load_start"]
    summary["timeline_s"] = {key: round(value - start, 1) for key, value in timeline.items()
                             if key not in ("version", "load_start", "load_seconds_new",
                                            "load_seconds_old")}
    summary["load_seconds"] = {"new": timeline["load_seconds_new"],
                               "old": timeline["load_seconds_old"]}
    summary["new_version"], summary["rolled_back_to"] = rolled_back, current
    return summary


def schemathesis_run(base, work):
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json",
               "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
               "response_schema_conformance", "--max-examples", str(FLAGS.schemathesis_examples),
               "--seed", "14", "--generation-database", "none", "--workers", "1",
               "--request-timeout", "30"]
    done = subprocess.run(["taskset", "-c", FLAGS.client_cpus, *command], cwd=work, env=env(),
                          capture_output=True, text=True, timeout=900)
    with open(os.path.join(work, "schemathesis.txt"), "w") as f:
        f.write(done.stdout + done.stderr)
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return {"exit_code": done.returncode,
            "server_errors": sum("Server error" in line for line in lines),
            "summary": [line for line in lines if "generated" in line or "passed" in line][-2:]}


def markdown(results):
    base = results["inprocess"]
    lines = [f"Export: {base['items']:,} items, {base['backend']}, k = {FLAGS.k}, "
             f"{base['users']:,} known users asked in turn; server on CPU {results['server_cpus']}, "
             f"locust on CPU {results['client_cpus']}.", "",
             "| client | concurrency | recommendations/s | p50 ms | p90 ms | p99 ms | failed | "
             "wrong | mean micro-batch | machine load (1 min) |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| in process, `recommend` one user at a time | 1 | {base['per_s']:,.0f} | "
             f"{base['p50_ms']:.2f} | – | {base['p99_ms']:.2f} | – | – | – | – |",
             f"| in process, `recommend_batch` of 32 | – | {base['batch32_per_s']:,.0f} | – | – | – "
             "| – | – | 32 | – |"]
    for run in results["runs"]:
        lines.append(f"| HTTP, locust | {run['concurrency']} | {run['per_s']:,.0f} | "
                     f"{run['p50_ms']:.2f} | {run['p90_ms']:.2f} | {run['p99_ms']:.2f} | "
                     f"{run['failed']} of {run['requests']:,} | {run['wrong']} | "
                     f"{run['mean_batch']:.1f} | {run['load_average_1m']:.1f} |")
    swap = results.get("swap")
    if swap:
        lines.append(f"| HTTP, locust, export + index + rollback under load | "
                     f"{FLAGS.swap_concurrency} | {swap['requests'] / swap['window_s']:,.0f} | "
                     f"{swap['p50_ms']:.2f} | {swap['p90_ms']:.2f} | {swap['p99_ms']:.2f} | "
                     f"{swap['failed']} of {swap['requests']:,} | {swap['wrong']} | – | "
                     f"{results['load_average_1m_end']:.1f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.role == "inprocess":
        role_inprocess()
    elif FLAGS.role == "writer":
        role_writer()
    else:
        if not FLAGS.output_dir:
            raise app.UsageError("--output_dir is required")
        orchestrate()


if __name__ == "__main__":
    app.run(main)
