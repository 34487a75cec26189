"""tte-index: build (or rebuild) the ANN index of an export.

Examples:
  tte-index                                  # faiss-ivfpq over saved_models/
  tte-index --backend=scann --num_leaves=1000 --leaves_to_search=100
  tte-index --backend=faiss-hnsw --hnsw_m=32 --ef_search=128
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from absl import flags

from tte_tfrs.errors import ConfigError
from tte_tfrs.retrieval import BACKENDS, DEFAULT_BACKEND
from tte_tfrs.retrieval.building import build_index
from tte_tfrs.scripts import cli

PROGRAM = "tte-index"
# backend -> {flag: (setting, "build" or "search", help)}
BACKEND_FLAGS: dict[str, dict[str, tuple[str, str, str]]] = {
    "faiss-ivfpq": {
        "nlist": ("nlist", "build", "faiss-ivfpq: coarse cells (default about 4 sqrt(items))."),
        "m": ("m", "build", "faiss-ivfpq: PQ sub-quantizers (default (dim + 1) / 2)."),
        "nbits": ("nbits", "build", "faiss-ivfpq: bits per sub-quantizer code (default 8)."),
        "nprobe": ("nprobe", "search", "faiss-ivfpq: cells searched per query."),
    },
    "faiss-hnsw": {
        "hnsw_m": ("m", "build", "faiss-hnsw: graph degree (default 32)."),
        "ef_construction": ("ef_construction", "build", "faiss-hnsw: build beam width "
                            "(default 100)."),
        "ef_search": ("ef_search", "search", "faiss-hnsw: search beam width (default 128)."),
    },
    "scann": {
        "num_leaves": ("num_leaves", "build", "scann: tree leaves (default about 2 sqrt(items))."),
        "reorder": ("reorder", "build", "scann: candidates re-scored exactly inside ScaNN."),
        "leaves_to_search": ("leaves_to_search", "search", "scann: leaves searched per query."),
    },
}


def define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string("output_dir", "saved_models", "Export root written by tte-train.",
                        flag_values=values)
    flags.DEFINE_enum("backend", DEFAULT_BACKEND, list(BACKENDS), "Retrieval backend.",
                      flag_values=values)
    for settings in BACKEND_FLAGS.values():
        for name, (_, _, help_text) in settings.items():
            flags.DEFINE_integer(name, None, help_text, lower_bound=1, flag_values=values)


def backend_params(values: flags.FlagValues) -> tuple[dict[str, Any], dict[str, Any]]:
    """(build_params, search_params) from the flags given; a flag of another backend is refused.

    Raises:
      ConfigError: a setting flag that does not apply to --backend.
    """
    build: dict[str, Any] = {}
    search: dict[str, Any] = {}
    for backend, settings in BACKEND_FLAGS.items():
        for name, (setting, kind, _) in settings.items():
            if not values[name].present:
                continue
            if backend != values.backend:
                raise ConfigError(f"applies to --backend={backend}, not {values.backend}",
                                      field=name)
            (build if kind == "build" else search)[setting] = values[name].value
    return build, search


def main(values: flags.FlagValues) -> int:
    started = time.perf_counter()
    index, meta = build_index(values.output_dir, values.backend,
                              *backend_params(values))
    for note in index.notes:
        print(f"note: {note}")
    print(f"Built {meta['backend']} index over {meta['count']:,} items (dim {meta['dim']}) of "
          f"version {meta['export_version']} in {time.perf_counter() - started:.1f} s: "
          f"{meta['path']}\n  build {meta['build_params']}\n  search {meta['search_params']}")
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """The ``tte-index`` console script; returns the exit code."""
    return cli.run(PROGRAM, __doc__, define_flags, main, argv)


if __name__ == "__main__":
    sys.exit(run())
