"""Where the export's memory goes: resident set size around each step of `tte_tfrs.export`.

Usage:
  python benchmarks/export_profile.py --data=/tmp/scale/bx-20000000 --work=/tmp/export-profile

Reads the data by streaming, trains one epoch (as `benchmarks/scale.py` does, but one epoch) and
exports, sampling this process's resident set every 10 ms. Each step of the writer (the functions
it calls, and every `np.save`, `np.savez` and `DataFrame.to_csv`) prints its resident MB before,
its peak and after (MB; a step inside another is printed before it).
"""

from __future__ import annotations

import os
import shutil
import threading
import time

from absl import app, flags, logging

flags.DEFINE_string("data", None, "A Book-Crossing-format folder (e.g. benchmarks/scale.py's).")
flags.DEFINE_string("work", "/tmp/tte-export-profile", "Shards and the export go here (replaced).")
flags.DEFINE_integer("epochs", 1, "Training epochs before the export.")
flags.mark_flag_as_required("data")
FLAGS = flags.FLAGS


def rss_mb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


class Sampler:
    def __init__(self):
        self.peak = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.01)

    def wrap(self, owner, name, label):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            before = self.peak = rss_mb()
            started = time.perf_counter()
            value = original(*args, **kwargs)
            print(f"  {label:<34} before {before:6,} peak {max(self.peak, rss_mb()):6,} "
                  f"after {rss_mb():6,}  {time.perf_counter() - started:5.1f} s", flush=True)
            self.peak = rss_mb()
            return value

        setattr(owner, name, wrapper)


def main(argv):
    del argv
    import numpy as np
    import pandas as pd

    import tte_tfrs  # noqa: F401
    from tte_tfrs.data import streaming
    from tte_tfrs.exports import lifecycle, writer
    from tte_tfrs.training import checkpoint, scaled
    from tte_tfrs.training.config import TrainConfig

    logging.set_verbosity(logging.WARNING)
    shutil.rmtree(FLAGS.work, ignore_errors=True)
    sampler = Sampler()
    config = TrainConfig(data_dir=FLAGS.data, epochs=FLAGS.epochs, early_stopping_patience=0,
                         input_mode="streaming", verbose=0,
                         streaming_dir=os.path.join(FLAGS.work, "stream"))
    data = streaming.read_streamed(config.data_dir, work_dir=config.streaming_dir)
    print(f"after reading: {rss_mb():,} MB", flush=True)
    result = scaled.train(config, data)
    print(f"after training: {rss_mb():,} MB; test RMSE {result.metrics['test_rmse']:.4f}",
          flush=True)
    for name in ("catalogue_of", "users_and_rated", "check_exportable", "item_embeddings",
                 "_save", "_save_retrieval", "plot_training_curve"):
        sampler.wrap(writer, name, f"writer.{name}")
    sampler.wrap(checkpoint, "save_state", "checkpoint.save_state")
    sampler.wrap(lifecycle, "commit_version", "lifecycle.commit_version")
    sampler.wrap(np, "save", "np.save")
    sampler.wrap(np, "savez", "np.savez")
    sampler.wrap(pd.DataFrame, "to_csv", "DataFrame.to_csv")
    trained = [result]
    del result
    before = sampler.peak = rss_mb()
    started = time.perf_counter()
    writer.export(trained.pop(), os.path.join(FLAGS.work, "models"))
    print(f"export: before {before:,} peak {sampler.peak:,} after {rss_mb():,} MB, "
          f"{time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    app.run(main)
