"""ItemIndex: ANN candidates (IM1), exact dot-product re-ranking (IM2), saved beside the export."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tte_tfrs import paths
from tte_tfrs.errors import ConfigError, ExportError, TteError
from tte_tfrs.exports.reader import read_json
from tte_tfrs.retrieval.base import Backend, Setting
from tte_tfrs.retrieval.exact import ExactBackend
from tte_tfrs.retrieval.registry import DEFAULT_BACKEND, get_backend
from tte_tfrs.retrieval.scoring import exact_scores, rank

META_FILE = "index.json"
DEFAULT_RERANK = 10        # candidates fetched per requested result (at least 10) before re-ranking
RERANK = Setting(1, 10000, help="candidates re-ranked exactly per requested result")
META_KEYS = ("backend", "export_version", "count", "dim", "fingerprint", "build_params",
             "search_params")


class IndexMismatchError(TteError):
    """A saved index does not belong to the item embeddings it is loaded with."""


def fingerprint(embeddings: np.ndarray) -> str:
    """A short digest of the embedding matrix, recorded with an index to detect mismatches."""
    data = np.ascontiguousarray(embeddings, dtype=np.float32)
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ItemIndex:
    """Top-k items by exact inner product, with candidates from a retrieval backend.

    Args:
      backend: a built `Backend`.
      embeddings: float32 [items, dim], the matrix the backend was built from.
      ids: item ids, one per row. Rows are ordered by id, so ties (broken by row) go to the lower id.
      notes: messages about the build (e.g. a fallback to exact search).
      rerank: candidates fetched per requested result (times max(k, 10)) and re-scored exactly.
      calibration: what `tte_tfrs.retrieval.calibration` measured for the search settings.
    """

    def __init__(self, backend: Backend, embeddings: np.ndarray, ids: Sequence[Any],
                 notes: Sequence[str] = (), rerank: int = DEFAULT_RERANK,
                 calibration: Mapping[str, Any] | None = None):
        self.backend = backend
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.ids = np.asarray(ids)
        self.notes = list(notes)
        self.rerank = RERANK.check("rerank", rerank)
        self.calibration = dict(calibration) if calibration else None
        if len(self.ids) != len(self.embeddings):
            raise ValueError(f"{len(self.ids)} ids for {len(self.embeddings)} embeddings")
        self._exact = backend if isinstance(backend, ExactBackend) else None

    @property
    def name(self) -> str:
        return self.backend.name

    @classmethod
    def build(cls, embeddings: np.ndarray, ids: Sequence[Any], backend: str = DEFAULT_BACKEND,
              build_params: Mapping[str, Any] | None = None,
              search_params: Mapping[str, Any] | None = None,
              rerank: int = DEFAULT_RERANK) -> ItemIndex:
        """Builds `backend` over `embeddings`; too small a catalogue falls back to exact search.

        Raises:
          ConfigError: unknown backend, ScaNN not installed, or an unknown setting or a value out
            of range (naming the setting).
        """
        backend_class = get_backend(backend)
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        RERANK.check("rerank", rerank)
        merged, _ = backend_class.settings(*embeddings.shape, build_params, search_params)
        needed = backend_class.minimum_items(merged)
        if len(embeddings) < needed:
            shown = {k: v for k, v in merged.items() if k not in ("seed", "max_norm")}
            note = (f"{backend}: the catalogue has {len(embeddings)} items but a trained index needs "
                    f"at least {needed} (with {shown}); using exact search instead")
            return cls(ExactBackend.build(embeddings), embeddings, ids, [note])
        built = backend_class.build(embeddings, build_params, search_params, ids=np.asarray(ids))
        return cls(built, embeddings, ids, rerank=rerank)

    def refreshed(self, embeddings: np.ndarray, ids: Sequence[Any],
                  backend: str = DEFAULT_BACKEND) -> tuple[ItemIndex, str]:
        """An index over an updated catalogue: this one re-encoded (or, for a database, updated
        in place) when its trained part still fits the new embeddings, otherwise `backend` rebuilt.

        A rebuild keeps this index's settings (less those derived from the data: the MIPS
        transform's R, and the cell count when the catalogue more than doubled or halved).

        Returns:
          (ItemIndex, a sentence saying which was done and why).
        """
        embeddings = np.ascontiguousarray(embeddings, np.float32)
        ids = np.asarray(ids)
        reused, reason = self.backend.reencoded(embeddings, self.embeddings, ids)
        if reused is not None:
            return ItemIndex(reused, embeddings, ids, rerank=self.rerank), reason
        build_params, search_params = None, None
        if self.backend.name == backend:
            build_params = dict(self.backend.build_params)
            build_params.pop("max_norm", None)
            if not 0.5 <= len(embeddings) / max(len(self.embeddings), 1) <= 2:
                for derived in ("nlist", "num_leaves", "training_sample_size"):
                    build_params.pop(derived, None)
        rebuilt = ItemIndex.build(embeddings, ids, backend, build_params, search_params,
                                  rerank=self.rerank)
        return rebuilt, " ".join([reason] + rebuilt.notes)

    def candidates_for(self, k: int, excluded: int = 0) -> int:
        """Backend candidates fetched for `k` results when `excluded` items may be skipped."""
        if self._exact is not None:
            return min(len(self.ids), k + excluded)
        return min(len(self.ids), self.rerank * max(k, 10) + excluded)

    def search(self, queries: np.ndarray, k: int, exclude_rows: Sequence[Any] | None = None,
               candidates: int | None = None, fallback: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores and rows of the top `k` items per query, best first, ties to the lower id.

        Args:
          queries: float32 [queries, dim] user embeddings.
          k: results per query (at most the number of items not excluded).
          exclude_rows: optional list (one per query) of row arrays never to return.
          candidates: how many backend candidates to re-score exactly (default: `rerank` x
            max(k, 10), plus the exclusions).
          fallback: answer a query exactly when the backend found fewer than k usable candidates
            (calibration turns it off, to measure the index alone).

        Returns:
          (scores float32 [queries, k], rows int64 [queries, k]); rows of -1 (score -inf) pad a
          query whose exclusions leave fewer than k items.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        excluded = [np.asarray(e, np.int64) for e in (exclude_rows or [()] * len(queries))]
        own = np.asarray([min(int(candidates or self.candidates_for(k, len(e))), len(self.ids))
                          for e in excluded], dtype=np.int64)
        most = int(own.max()) if len(own) else min(int(candidates or self.candidates_for(k)),
                                                   len(self.ids))
        _, rows = self.backend.search(queries, most)
        # Each query keeps only as many candidates as it would get alone, so its answer does not
        # depend on the other queries of the batch (their exclusions widen the search).
        rows = np.where(np.arange(rows.shape[1])[None, :] < own[:, None], rows, -1)
        scores, rows = self._rescored(queries, rows, excluded, k)
        # A query whose candidates ran out (many exclusions, a poor probe) is answered exactly.
        short = np.flatnonzero((rows < 0).any(axis=1)) if rows.size and fallback else []
        for q in short:
            skipped = excluded[q]
            available = len(self.ids) - len(np.unique(skipped))
            if (rows[q] >= 0).sum() < min(k, available):
                exact = self._exact_backend()
                _, window = exact.search(queries[q:q + 1], min(len(self.ids), k + len(skipped)))
                scores[q], rows[q] = self._rescored(queries[q:q + 1], window,
                                                    [skipped], k)
        return scores, rows

    def _rescored(self, queries, rows, excluded, k):
        """The one exact score of every candidate, exclusions removed, ranked (top k)."""
        scores = exact_scores(queries, self.embeddings, rows)
        if excluded:
            for q, rows_to_skip in enumerate(excluded):
                if len(rows_to_skip):
                    scores[q, np.isin(rows[q], rows_to_skip)] = -np.inf
        return rank(scores, rows, k)

    def _exact_backend(self) -> ExactBackend:
        if self._exact is None:
            self._exact = ExactBackend.build(self.embeddings)
        return self._exact

    def save(self, folder: str, export_version: int, extra: Mapping[str, Any] | None = None) -> dict:
        """Writes the index and its metadata atomically into `folder` (replacing an older one).

        The metadata records the embeddings it belongs to (count, dimension, fingerprint, export
        version), the settings, the calibration and a SHA-256 of every file, checked on load.
        """
        parent = os.path.dirname(os.path.abspath(folder))
        os.makedirs(parent, exist_ok=True)
        staging = paths.make_temp_folder(parent, ".staging-index-")   # normal modes, not 0700
        try:
            self.backend.save(staging)
            files = {}
            for root, _, names in os.walk(staging):
                for name in names:
                    path = os.path.join(root, name)
                    files[os.path.relpath(path, staging)] = file_digest(path)
            meta = {"backend": self.backend.name, "export_version": int(export_version),
                    "count": int(len(self.ids)), "dim": int(self.embeddings.shape[1]),
                    "fingerprint": fingerprint(self.embeddings),
                    "build_params": self.backend.build_params,
                    "search_params": self.backend.search_params, "rerank": self.rerank,
                    **self.backend.describe(), "notes": self.notes,
                    "calibration": self.calibration, **(extra or {}),
                    "files": dict(sorted(files.items()))}
            with open(os.path.join(staging, META_FILE), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2)
            if os.path.exists(folder):
                old = paths.make_temp_folder(parent, ".old-index-")
                os.rename(folder, os.path.join(old, "index"))
                os.rename(staging, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return meta

    @classmethod
    def load(cls, folder: str, embeddings: np.ndarray, ids: Sequence[Any], export_version: int,
             search_params: Mapping[str, Any] | None = None) -> ItemIndex:
        """Loads a saved index, refusing one built for other embeddings or damaged.

        Raises:
          FileNotFoundError: no index in `folder`.
          IndexMismatchError: the dimension, count, export version or embedding fingerprint differ.
          ExportError: the metadata or an index file is damaged (the message names the file), or
            a saved setting is out of range.
          ConfigError: a `search_params` override is unknown or out of range.
        """
        meta_path = os.path.join(folder, META_FILE)
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"no index in {folder}; build one with tte-index")
        meta = read_json(meta_path, "index metadata")
        if not isinstance(meta, dict) or any(key not in meta for key in META_KEYS):
            missing = [key for key in META_KEYS if not isinstance(meta, dict) or key not in meta]
            raise ExportError(f"{meta_path}: not index metadata (missing {', '.join(missing)}); "
                              "rebuild the index with tte-index")
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        expected = {"dim": int(embeddings.shape[1]), "count": int(len(embeddings)),
                    "export_version": int(export_version), "fingerprint": fingerprint(embeddings)}
        wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if wrong:
            details = "; ".join(f"{k}: index has {a}, export has {b}" for k, (a, b) in wrong.items())
            raise IndexMismatchError(f"the index in {folder} was built for other item embeddings "
                                     f"({details}); rebuild it with tte-index")
        _check_files(folder, meta_path, meta.get("files"))
        try:
            backend_class = get_backend(meta["backend"])
        except ConfigError as exc:
            raise ExportError(f"{meta_path}: {exc}") from None
        try:
            rerank = RERANK.check("rerank", meta.get("rerank", DEFAULT_RERANK))
            backend_class(meta["build_params"], meta["search_params"])   # range-checks both
        except (ConfigError, TypeError, AttributeError) as exc:
            raise ExportError(f"{meta_path}: {exc}; rebuild the index with tte-index") from None
        backend = backend_class.load(folder, embeddings, np.asarray(ids))
        if search_params:
            backend.set_search_params(**search_params)
        return cls(backend, embeddings, ids, meta.get("notes", ()), rerank=rerank,
                   calibration=meta.get("calibration"))


def _check_files(folder: str, meta_path: str, files: Any) -> None:
    """Every file the index was saved with is there, unchanged (SHA-256); else ExportError naming it."""
    if not isinstance(files, dict) or not files:
        raise ExportError(f"{meta_path}: lists no index files; rebuild the index with tte-index")
    root = os.path.realpath(folder)
    for name, digest in files.items():
        path = os.path.realpath(os.path.join(folder, str(name)))
        if os.path.commonpath([root, path]) != root:
            raise ExportError(f"{meta_path}: names a file outside the index folder ({name!r}); "
                              "rebuild the index with tte-index")
        if not os.path.isfile(path):
            raise ExportError(f"{os.path.join(folder, name)}: missing; rebuild the index with tte-index")
        if file_digest(path) != digest:
            raise ExportError(f"{os.path.join(folder, name)}: damaged (its SHA-256 differs from the one "
                              "recorded when the index was saved); rebuild it with tte-index")
