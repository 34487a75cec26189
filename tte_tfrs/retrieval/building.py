"""Builds, calibrates and saves the ANN index of an export version, and records it in the manifest.

Calibration needs queries shaped like the real ones: the export's own user tower applied to its
known users (`user_queries`). TensorFlow is imported only for that, when an index is built.

May import: tte_tfrs.exports (reader and lifecycle), the rest of tte_tfrs.retrieval.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from tte_tfrs.errors import ConfigError, ExportError
from tte_tfrs.exports import lifecycle
from tte_tfrs.exports.reader import ExportReader, read_consistent
from tte_tfrs.retrieval.calibration import (
    CalibrationConfig,
    calibrate,
    exact_truth,
    queries_from_users,
)
from tte_tfrs.retrieval.item_index import DEFAULT_RERANK, IndexMismatchError, ItemIndex
from tte_tfrs.retrieval.registry import DEFAULT_BACKEND, get_backend, installed_backends

USER_BATCH = 1024
AUTO = "auto"                   # build_index(backend="auto"): the fastest backend meeting the target
AUTO_CANDIDATES = ("faiss-ivfpq", "scann", "faiss-hnsw", "exact")
DEFAULT_CALIBRATION = CalibrationConfig()


def user_queries(reader: ExportReader, count: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Calibration queries from an export: its user tower over up to `count` known users (topped up
    with synthetic queries shaped like them when it knows few users; `queries_from_users`).

    Raises:
      ExportError: the user tower or the users' table cannot be read.
    """
    import tensorflow as tf  # only here: the rest of the retrieval stage needs no TensorFlow

    tower = reader.serving_function("user_tower")
    users = reader.users
    if len(users) == 0:
        raise ExportError(f"{reader.folder('users')}: the export knows no users to calibrate with")
    rng = np.random.default_rng(seed)
    chosen = users.iloc[np.sort(rng.choice(len(users), size=min(count, len(users)), replace=False))]
    specs = reader.user_inputs()
    embeddings = []
    for start in range(0, len(chosen), USER_BATCH):
        block = chosen.iloc[start:start + USER_BATCH]
        inputs = {}
        for name, spec in specs.items():
            column = block[name] if name in block else np.full(len(block), "", dtype=object)
            if spec["dtype"] == "float32":
                values = np.asarray([_as_float(v) for v in column], np.float32)
                inputs[name] = tf.constant(values, tf.float32)
            else:
                inputs[name] = tf.constant([str(v) for v in column], tf.string)
        embeddings.append(tower(**inputs)["embedding"].numpy())
    return queries_from_users(np.concatenate(embeddings), count, seed)


def _as_float(value: Any) -> float:
    try:
        return float(value) if str(value).strip() not in ("", "nan", "NaN") else float("nan")
    except ValueError:
        return float("nan")


def build_index(output_dir: str, backend: str = DEFAULT_BACKEND,
                build_params: Mapping[str, Any] | None = None,
                search_params: Mapping[str, Any] | None = None,
                calibration: CalibrationConfig | None = DEFAULT_CALIBRATION,
                rerank: int | None = None) -> tuple[ItemIndex, dict]:
    """Builds `backend` over the current export's item embeddings, calibrates it and saves it.

    Calibration (unless `calibration` is None) picks the cheapest search setting reaching the
    target recall@k after exact re-ranking on the export's own user queries (see
    `tte_tfrs.retrieval.calibration`); search settings given in `search_params` are kept and only
    measured, and so is `rerank` (candidates re-ranked exactly per result) when given. The index
    goes to ``OUTPUT_DIR/index/<backend>/<version>/`` (replacing an older one
    atomically) and the manifest's ``indexes`` entry records its settings and the calibration.

    With ``backend="auto"`` every installed in-process backend (faiss-ivfpq, scann, faiss-hnsw and
    exact) is built with its defaults and calibrated on the same queries, and the one with the
    fastest single query among those reaching the target is saved; the manifest records the
    comparison as ``auto``.

    Returns:
      (ItemIndex, metadata dict).

    Raises:
      ExportError: no export, or a damaged one. ConfigError: unknown backend or a setting out of
      range (naming it).
    """
    if backend == AUTO:
        if build_params or search_params or rerank:
            raise ConfigError("backend auto takes no settings: each backend uses its defaults",
                              field="backend")
        return read_consistent(output_dir, lambda reader: _build_fastest(
            reader, calibration or DEFAULT_CALIBRATION))
    backend_class = get_backend(backend)
    return read_consistent(output_dir, lambda reader: _build_one(
        reader, backend_class, backend, build_params, search_params, calibration, rerank))


def _build_one(reader: ExportReader, backend_class: Any, backend: str,
               build_params: Mapping[str, Any] | None, search_params: Mapping[str, Any] | None,
               calibration: CalibrationConfig | None, rerank: int | None) -> tuple[ItemIndex, dict]:
    table = reader.item_table
    backend_class.settings(*table.embeddings.shape, build_params, search_params)   # fail early
    index = ItemIndex.build(table.embeddings, table.ids, backend, build_params, search_params,
                            rerank=rerank or DEFAULT_RERANK)
    try:
        if calibration is not None:
            _calibrate(reader, index, calibration, search_params, rerank)
        return index, _save(reader, index, backend)
    except BaseException:
        index.backend.close()
        raise


def _build_fastest(reader: ExportReader, config: CalibrationConfig) -> tuple[ItemIndex, dict]:
    """Builds and calibrates every candidate backend; saves the fastest reaching the target."""
    table = reader.item_table
    queries, sources = user_queries(reader, config.queries, config.seed)
    truth = exact_truth(table.embeddings, queries, min(config.k, len(table.ids)))
    compared: dict[str, dict] = {}
    best: ItemIndex | None = None
    for name in [b for b in AUTO_CANDIDATES if b in installed_backends()]:
        index = ItemIndex.build(table.embeddings, table.ids, name)
        if index.name != name:
            compared[name] = {"skipped": " ".join(index.notes)}
            continue
        record = calibrate(index, queries, config, truth=truth, query_sources=sources)
        compared[name] = {key: record[key] for key in ("reached", "recall", "single_query_p50_ms",
                                                       "search_params", "rerank")}
        faster = best is None or record["single_query_p50_ms"] < best.calibration["single_query_p50_ms"]
        if record["reached"] and faster:
            if best is not None:
                best.backend.close()
            best = index
        else:
            index.backend.close()
    assert best is not None                     # exact search always reaches any target
    try:
        return best, _save(reader, best, best.name, auto={"chosen": best.name, "compared": compared})
    except BaseException:
        best.backend.close()
        raise


def _calibrate(reader: ExportReader, index: ItemIndex, config: CalibrationConfig,
               fixed: Mapping[str, Any] | None = None, fixed_rerank: int | None = None) -> dict:
    queries, sources = user_queries(reader, config.queries, config.seed)
    return calibrate(index, queries, config, query_sources=sources, fixed=fixed,
                     fixed_rerank=fixed_rerank)


def refresh_indexes(output_dir: str, parent_version: int) -> dict[str, dict]:
    """Gives the current version every index the parent version had, re-encoded or rebuilt.

    For each backend saved for the parent, the parent's index is kept (its trained clusters and
    codebooks re-encode the new embeddings, added items included; a database upserts the items
    that changed or were added and deletes the removed ones) when it still fits them, and rebuilt
    otherwise (`ItemIndex.refreshed`); then it is calibrated again with the parent's target. The
    manifest records which, as ``refresh``.

    Returns:
      {backend: metadata dict} of the indexes written.
    """
    parent = ExportReader(output_dir, parent_version)
    reader = ExportReader(output_dir)
    old, new = parent.item_table, reader.item_table
    written = {}
    for backend in sorted(parent.manifest.get("indexes", {})):
        previous = parent.manifest["indexes"][backend]
        try:
            old_index = ItemIndex.load(parent.index_folder(backend), old.embeddings, old.ids,
                                       parent.version)
        except (FileNotFoundError, IndexMismatchError, ExportError) as exc:
            index = ItemIndex.build(new.embeddings, new.ids, backend)
            how = f"rebuilt: the parent's index could not be used ({exc})"
        else:
            try:
                index, how = old_index.refreshed(new.embeddings, new.ids, backend)
            finally:
                old_index.backend.close()
        try:
            calibrated = isinstance(previous, dict) and isinstance(previous.get("calibration"), dict)
            if calibrated:
                before = previous["calibration"]
                fixed = before.get("fixed") if isinstance(before.get("fixed"), dict) else {}
                _calibrate(reader, index, CalibrationConfig(
                    target_recall=float(before.get("target_recall", 0.95)),
                    k=int(before.get("k", 10))), fixed.get("search_params"), fixed.get("rerank"))
            written[backend] = _save(reader, index, backend, refresh=how)
        finally:
            index.backend.close()
    return written


def _save(reader: ExportReader, index: ItemIndex, backend: str, **extra: Any) -> dict:
    """Saves `index` for the reader's version and records it in that version's manifest."""
    root, version = reader.root, reader.version
    with lifecycle.writer_lock(root):
        lifecycle.repair(root)                     # every writer first repairs a killed one's leftovers
        manifest = ExportReader(root).manifest
        if manifest["version"] != version:
            raise lifecycle.LifecycleError(f"{root} changed version while the index was built; "
                                           "run tte-index again")
        folder = reader.index_folder(backend)
        meta = index.save(folder, version, extra)
        meta["path"] = os.path.relpath(folder, root)
        meta.pop("files", None)
        manifest.setdefault("indexes", {})[backend] = meta
        lifecycle.write_manifest(root, manifest)
    return meta
