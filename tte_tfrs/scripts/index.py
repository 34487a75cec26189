"""tte-index: build (or rebuild) the ANN index of an export, calibrated to a target recall.

The search settings (nprobe; leaves_to_search and reorder depth; ef_search) are calibrated on the
export's own user queries: the cheapest setting whose recall@k after exact re-ranking reaches
--target_recall is kept, and the measured recall and speed are printed and recorded in the
manifest. Search settings given as flags are kept and only measured.

Examples:
  tte-index                                  # faiss-ivfpq over saved_models/, calibrated to 0.95
  tte-index --backend=scann --target_recall=0.99
  tte-index --backend=faiss-hnsw --hnsw_m=32 --ef_search=128
  tte-index --backend=auto                   # the fastest backend reaching the target here
  tte-index --backend=milvus                 # Milvus Lite, saved inside the export
  tte-index --backend=milvus --milvus_uri=http://milvus.internal:19530 --milvus_index_type=IVF_FLAT
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from absl import flags

from tte_tfrs.errors import ConfigError
from tte_tfrs.retrieval import BACKENDS, DEFAULT_BACKEND, get_backend
from tte_tfrs.retrieval.base import check_settings
from tte_tfrs.retrieval.building import AUTO, build_index
from tte_tfrs.retrieval.calibration import (
    DEFAULT_K,
    DEFAULT_QUERIES,
    DEFAULT_TARGET_RECALL,
    CalibrationConfig,
)
from tte_tfrs.retrieval.milvus_backend import INDEX_TYPES
from tte_tfrs.scripts import cli

PROGRAM = "tte-index"
# flag -> (help, {backend: (setting, "build" or "search")}); a flag may serve several backends.
SETTING_FLAGS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "nlist": ("faiss-ivfpq, milvus (IVF): coarse cells (default about 4 sqrt(items)).",
              {"faiss-ivfpq": ("nlist", "build"), "milvus": ("nlist", "build")}),
    "m": ("faiss-ivfpq: PQ sub-quantizers (default (dim + 1) / 2).",
          {"faiss-ivfpq": ("m", "build")}),
    "nbits": ("faiss-ivfpq: bits per sub-quantizer code (default 8).",
              {"faiss-ivfpq": ("nbits", "build")}),
    "nprobe": ("faiss-ivfpq, milvus (IVF): cells searched per query (default: calibrated).",
               {"faiss-ivfpq": ("nprobe", "search"), "milvus": ("nprobe", "search")}),
    "hnsw_m": ("faiss-hnsw, milvus (HNSW): graph degree (default 32).",
               {"faiss-hnsw": ("m", "build"), "milvus": ("m", "build")}),
    "ef_construction": ("faiss-hnsw, milvus (HNSW): build beam width (default 100).",
                        {"faiss-hnsw": ("ef_construction", "build"),
                         "milvus": ("ef_construction", "build")}),
    "ef_search": ("faiss-hnsw, milvus (HNSW): search beam width (default: calibrated).",
                  {"faiss-hnsw": ("ef_search", "search"), "milvus": ("ef", "search")}),
    "num_leaves": ("scann: tree leaves (default about 2 sqrt(items)).",
                   {"scann": ("num_leaves", "build")}),
    "reorder": ("scann: default number of candidates re-scored inside ScaNN (default 1000).",
                {"scann": ("reorder", "build")}),
    "leaves_to_search": ("scann: leaves searched per query (default: calibrated).",
                         {"scann": ("leaves_to_search", "search")}),
    "pre_reorder_num_neighbors": ("scann: candidates re-scored inside ScaNN per query "
                                  "(default: calibrated).",
                                  {"scann": ("pre_reorder_num_neighbors", "search")}),
}
STRING_FLAGS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "milvus_uri": ("milvus: a Milvus server or cluster, e.g. http://host:19530 (default: Milvus Lite "
                   "inside the export's index folder). A token is read from $MILVUS_TOKEN.",
                   {"milvus": ("uri", "build")}),
}


def define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string("output_dir", "saved_models", "Export root written by tte-train.",
                        flag_values=values)
    flags.DEFINE_enum("backend", DEFAULT_BACKEND, [*BACKENDS, AUTO], "Retrieval backend; auto: "
                      "build faiss-ivfpq, scann, faiss-hnsw and exact with their defaults and keep "
                      "the fastest reaching --target_recall.", flag_values=values)
    flags.DEFINE_float("target_recall", DEFAULT_TARGET_RECALL, "Recall@k after exact re-ranking "
                       "that the calibrated search settings must reach, in (0, 1].",
                       flag_values=values)
    flags.DEFINE_integer("calibration_k", DEFAULT_K, "k of the recall@k calibrated for.",
                         flag_values=values)
    flags.DEFINE_integer("calibration_queries", DEFAULT_QUERIES, "Known users embedded as "
                         "calibration queries (synthetic ones like them are added when the export "
                         "knows fewer than 300).", flag_values=values)
    flags.DEFINE_bool("calibrate", True, "Calibrate the search settings (--nocalibrate keeps the "
                      "defaults and measures nothing).", flag_values=values)
    flags.DEFINE_integer("rerank", None, "Candidates re-ranked exactly per requested result "
                         "(times max(k, 10); default: calibrated).", flag_values=values)
    flags.DEFINE_enum("milvus_index_type", None, list(INDEX_TYPES), "milvus: index type (default "
                      "HNSW; Milvus Lite has no IVF_PQ).", flag_values=values)
    for name, (help_text, _) in SETTING_FLAGS.items():
        flags.DEFINE_integer(name, None, help_text, flag_values=values)
    for name, (help_text, _) in STRING_FLAGS.items():
        flags.DEFINE_string(name, None, help_text, flag_values=values)


def backend_params(values: flags.FlagValues) -> tuple[dict[str, Any], dict[str, Any]]:
    """(build_params, search_params) from the flags given; a flag of another backend is refused.

    Raises:
      ConfigError: a setting flag that does not apply to --backend.
    """
    build: dict[str, Any] = {}
    search: dict[str, Any] = {}
    backend = values.backend
    settings = {**SETTING_FLAGS, **STRING_FLAGS,
                "milvus_index_type": ("", {"milvus": ("index_type", "build")})}
    for name, (_, by_backend) in settings.items():
        if not values[name].present:
            continue
        if backend not in by_backend:
            raise ConfigError(f"applies to --backend={' or '.join(by_backend)}, not {backend}",
                              field=name)
        setting, kind = by_backend[backend]
        (build if kind == "build" else search)[setting] = values[name].value
    return build, search


def flag_for(backend: str, setting: str) -> str:
    """The tte-index flag that sets `setting` of `backend` (for messages)."""
    for name, (_, by_backend) in {**SETTING_FLAGS, **STRING_FLAGS}.items():
        if by_backend.get(backend, ("",))[0] == setting:
            return name
    return {"index_type": "milvus_index_type"}.get(setting, setting)


def calibration_config(values: flags.FlagValues) -> CalibrationConfig | None:
    if not values.calibrate:
        return None
    return CalibrationConfig(target_recall=values.target_recall, k=values.calibration_k,
                             queries=values.calibration_queries)


def main(values: flags.FlagValues) -> int:
    started = time.perf_counter()
    try:
        build, search = backend_params(values)
        calibration = calibration_config(values)
        if values.rerank is not None and values.rerank < 1:
            raise ConfigError(f"must be at least 1, got {values.rerank}", field="rerank")
        # Every value in range before anything is read (checks needing the catalogue come later).
        if values.backend != AUTO:
            backend_class = get_backend(values.backend)
            check_settings(values.backend, "build", backend_class.BUILD, build)
            check_settings(values.backend, "search", backend_class.SEARCH, search)
        index, meta = build_index(values.output_dir, values.backend, build, search,
                                  calibration, rerank=values.rerank)
    except ConfigError as exc:
        flag = flag_for(values.backend, exc.field) if exc.field else None
        if flag is None or flag not in values:
            raise
        message = str(exc)
        if message.startswith(f"{exc.field} "):             # "m must be ..." -> "must be ..."
            message = message[len(exc.field) + 1:]
        raise ConfigError(message, field=flag) from None
    for note in index.notes:
        print(f"note: {note}")
    print(f"Built {meta['backend']} index over {meta['count']:,} items (dim {meta['dim']}) of "
          f"version {meta['export_version']} in {time.perf_counter() - started:.1f} s: "
          f"{meta['path']}\n  build {meta['build_params']}\n  search {meta['search_params']}, "
          f"rerank {meta['rerank']}")
    if "milvus" in meta:
        print(f"  Milvus: {meta['milvus']['uri']}, collection {meta['milvus']['collection']}")
    if "auto" in meta:
        for name, result in meta["auto"]["compared"].items():
            if "skipped" in result:
                print(f"  auto: {name}: skipped ({result['skipped']})")
            else:
                print(f"  auto: {name}: recall {result['recall']:.4f}, single-query p50 "
                      f"{result['single_query_p50_ms']:.3f} ms"
                      + ("" if result["reached"] else " (target not reached)"))
        print(f"  auto: kept {meta['backend']}; use it with tte-recommend --backend={meta['backend']}")
    calibrated = meta.get("calibration")
    if calibrated:
        print(format_calibration(calibrated))
        if not calibrated["reached"]:
            print(f"warning: {calibrated['message']}", file=sys.stderr)
    return 0


def format_calibration(record: dict[str, Any]) -> str:
    names = {"users": "user", "synthetic": "synthetic", "given": "given", "generated": "generated"}
    source = " + ".join(f"{n:,} {names.get(what, what)}" for what, n in record["queries"].items() if n)
    verdict = "reached" if record["reached"] else "NOT reached"
    return (f"  calibration: target recall@{record['k']} {record['target_recall']} {verdict} on "
            f"{source} queries: {record['search_params']}, rerank {record['rerank']} -> recall "
            f"{record['recall']:.4f} (99% lower bound {record['recall_lower_bound']:.4f}), "
            f"single-query p50 {record['single_query_p50_ms']:.3f} ms ({record['qps']:,.0f} QPS) "
            f"[{record['message']}]")


def run(argv: Sequence[str] | None = None) -> int:
    """The ``tte-index`` console script; returns the exit code."""
    return cli.run(PROGRAM, __doc__, define_flags, main, argv)


if __name__ == "__main__":
    sys.exit(run())
