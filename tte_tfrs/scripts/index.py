"""tte-index: build (or rebuild) the ANN index of an export.

Example:
  tte-index                                  # faiss-ivfpq over saved_models/
  tte-index --backend=scann --num_leaves=1000 --leaves_to_search=100
  tte-index --backend=faiss-hnsw --hnsw_m=32 --ef_search=128
"""

import sys
import time

from absl import app, flags

from tte_tfrs.errors import TteError
from tte_tfrs.indexing import build_index
from tte_tfrs.scripts import shared_flags  # shared flags --output_dir, --backend and start()

flags.DEFINE_integer("nlist", None, "faiss-ivfpq: coarse cells (default about 4 sqrt(items)).")
flags.DEFINE_integer("m", None, "faiss-ivfpq: PQ sub-quantizers (default (dim + 1) / 2).")
flags.DEFINE_integer("nbits", None, "faiss-ivfpq: bits per sub-quantizer code (default 8).")
flags.DEFINE_integer("nprobe", None, "faiss-ivfpq: cells searched per query.")
flags.DEFINE_integer("hnsw_m", None, "faiss-hnsw: graph degree (default 32).")
flags.DEFINE_integer("ef_construction", None, "faiss-hnsw: build beam width (default 100).")
flags.DEFINE_integer("ef_search", None, "faiss-hnsw: search beam width (default 128).")
flags.DEFINE_integer("num_leaves", None, "scann: tree leaves (default about 2 sqrt(items)).")
flags.DEFINE_integer("leaves_to_search", None, "scann: leaves searched per query.")
flags.DEFINE_integer("reorder", None, "scann: candidates re-scored exactly inside ScaNN.")
FLAGS = flags.FLAGS


def backend_params(backend):
    """(build_params, search_params) from the flags that apply to `backend`."""
    if backend == "faiss-ivfpq":
        return ({"nlist": FLAGS.nlist, "m": FLAGS.m, "nbits": FLAGS.nbits},
                {"nprobe": FLAGS.nprobe})
    if backend == "faiss-hnsw":
        return ({"m": FLAGS.hnsw_m, "ef_construction": FLAGS.ef_construction},
                {"ef_search": FLAGS.ef_search})
    if backend == "scann":
        return ({"num_leaves": FLAGS.num_leaves, "reorder": FLAGS.reorder},
                {"leaves_to_search": FLAGS.leaves_to_search})
    return {}, {}


def main(argv):
    shared_flags.start(argv)
    try:
        started = time.perf_counter()
        index, meta = build_index(FLAGS.output_dir, FLAGS.backend, *backend_params(FLAGS.backend))
    except (TteError, ValueError, OSError) as exc:
        print(f"tte-index: error: {exc}", file=sys.stderr)
        return 2
    for note in index.notes:
        print(f"note: {note}")
    print(f"Built {meta['backend']} index over {meta['count']:,} items (dim {meta['dim']}) of "
          f"version {meta['export_version']} in {time.perf_counter() - started:.1f} s: "
          f"{meta['path']}\n  build {meta['build_params']}\n  search {meta['search_params']}")
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
