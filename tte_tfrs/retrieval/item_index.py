"""ItemIndex: ANN candidates (IM1), exact dot-product re-ranking (IM2), saved beside the export."""

import hashlib
import json
import os
import shutil

import numpy as np

from tte_tfrs import paths
from tte_tfrs.errors import ExportError, TteError
from tte_tfrs.exports.reader import read_json
from tte_tfrs.retrieval.base import merge_params, top_k_rows
from tte_tfrs.retrieval.exact import ExactBackend
from tte_tfrs.retrieval.registry import DEFAULT_BACKEND, get_backend

META_FILE = "index.json"
DEFAULT_RERANK = 10        # candidates fetched per requested result before exact re-ranking
MIN_CANDIDATES = 100


class IndexMismatchError(TteError):
    """A saved index does not belong to the item embeddings it is loaded with."""


def fingerprint(embeddings):
    """A short digest of the embedding matrix, recorded with an index to detect mismatches."""
    data = np.ascontiguousarray(embeddings, dtype=np.float32)
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


class ItemIndex:
    """Top-k items by exact inner product, with candidates from a retrieval backend.

    Args:
      backend: a built `Backend`.
      embeddings: float32 [items, dim], the matrix the backend was built from.
      ids: item ids, one per row. Rows are ordered by id, so ties (broken by row) go to the lower id.
      notes: messages about the build (e.g. a fallback to exact search).
    """

    def __init__(self, backend, embeddings, ids, notes=()):
        self.backend = backend
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.ids = np.asarray(ids)
        self.notes = list(notes)
        if len(self.ids) != len(self.embeddings):
            raise ValueError(f"{len(self.ids)} ids for {len(self.embeddings)} embeddings")

    @property
    def name(self):
        return self.backend.name

    @classmethod
    def build(cls, embeddings, ids, backend=DEFAULT_BACKEND, build_params=None, search_params=None):
        """Builds `backend` over `embeddings`; too small a catalogue falls back to exact search.

        Raises:
          ConfigError: unknown backend or ScaNN not installed.
          ValueError: unknown build or search setting.
        """
        backend_class = get_backend(backend)
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        build_defaults, search_defaults = backend_class.default_params(*embeddings.shape)
        merged = merge_params(backend, "build", build_defaults, build_params)
        merge_params(backend, "search", search_defaults, search_params)
        needed = backend_class.minimum_items(merged)
        if len(embeddings) < needed:
            shown = {k: v for k, v in merged.items() if k not in ("seed", "max_norm")}
            note = (f"{backend}: the catalogue has {len(embeddings)} items but a trained index needs "
                    f"at least {needed} (with {shown}); using exact search instead")
            return cls(ExactBackend.build(embeddings), embeddings, ids, [note])
        built = backend_class.build(embeddings, build_params, search_params)
        return cls(built, embeddings, ids)

    def refreshed(self, embeddings, ids, backend=DEFAULT_BACKEND):
        """An index over an updated catalogue: this one re-encoded when its trained part still
        fits the new embeddings, otherwise `backend` rebuilt.

        A rebuild keeps this index's settings (less those derived from the data: the MIPS
        transform's R, and the cell count when the catalogue more than doubled or halved).

        Returns:
          (ItemIndex, a sentence saying which was done and why).
        """
        embeddings = np.ascontiguousarray(embeddings, np.float32)
        reused, reason = self.backend.reencoded(embeddings, self.embeddings)
        if reused is not None:
            return ItemIndex(reused, embeddings, ids), reason
        build_params, search_params = None, None
        if self.backend.name == backend:
            build_params = dict(self.backend.build_params)
            build_params.pop("max_norm", None)
            if not 0.5 <= len(embeddings) / max(len(self.embeddings), 1) <= 2:
                build_params.pop("nlist", None)
            search_params = {k: v for k, v in self.backend.search_params.items() if k != "nprobe"}
        rebuilt = ItemIndex.build(embeddings, ids, backend, build_params, search_params)
        return rebuilt, " ".join([reason] + rebuilt.notes)

    def candidates_for(self, k, excluded=0):
        if isinstance(self.backend, ExactBackend):
            return min(len(self.ids), k + excluded)
        return min(len(self.ids), max(DEFAULT_RERANK * k, MIN_CANDIDATES) + excluded)

    def search(self, queries, k, exclude_rows=None, candidates=None):
        """Exact scores and rows of the top `k` items per query, best first, ties to the lower id.

        Args:
          queries: float32 [queries, dim] user embeddings.
          k: results per query (at most the number of items not excluded).
          exclude_rows: optional list (one per query) of row arrays never to return.
          candidates: how many backend candidates to re-score exactly (default: 10 k, at least
            100, plus the exclusions; all items gives exhaustive re-ranking).

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
        scores = self._exact_scores(queries, rows, excluded)
        order = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), -scores), axis=1)
        rows = np.take_along_axis(rows, order, axis=1)[:, :k]
        scores = np.take_along_axis(scores, order, axis=1)[:, :k]
        rows[np.isneginf(scores)] = -1
        # A query whose candidates ran out (many exclusions, a poor probe) is answered exactly.
        short = np.flatnonzero(np.isneginf(scores).any(axis=1) if scores.size else [])
        for q in short:
            available = len(self.ids) - len(np.unique(excluded[q]))
            if np.isfinite(scores[q]).sum() < min(k, available):
                exact_scores = self.embeddings @ queries[q]
                exact_scores[excluded[q]] = -np.inf
                best = top_k_rows(exact_scores[None, :], k)[0]
                rows[q] = np.where(np.isfinite(exact_scores[best]), best, -1)
                scores[q] = exact_scores[best]
        return scores.astype(np.float32), rows

    def _exact_scores(self, queries, rows, excluded):
        safe = np.where(rows < 0, 0, rows)
        scores = np.einsum("qd,qcd->qc", queries, self.embeddings[safe])
        scores[rows < 0] = -np.inf
        for q, rows_to_skip in enumerate(excluded):
            if len(rows_to_skip):
                scores[q, np.isin(rows[q], rows_to_skip)] = -np.inf
        return scores

    def save(self, folder, export_version):
        """Writes the index and its metadata atomically into `folder` (replacing an older one)."""
        parent = os.path.dirname(os.path.abspath(folder))
        os.makedirs(parent, exist_ok=True)
        staging = paths.make_temp_folder(parent, ".staging-index-")   # normal modes, not 0700
        try:
            self.backend.save(staging)
            meta = {"backend": self.backend.name, "export_version": int(export_version),
                    "count": int(len(self.ids)), "dim": int(self.embeddings.shape[1]),
                    "fingerprint": fingerprint(self.embeddings),
                    "build_params": self.backend.build_params,
                    "search_params": self.backend.search_params, "notes": self.notes}
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
    def load(cls, folder, embeddings, ids, export_version, search_params=None):
        """Loads a saved index, refusing one built for other embeddings.

        Raises:
          IndexMismatchError: the dimension, count, export version or embedding fingerprint differ.
          FileNotFoundError: no index in `folder`.
        """
        meta_path = os.path.join(folder, META_FILE)
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"no index in {folder}; build one with tte-index")
        meta = read_json(meta_path, "index metadata")
        if not isinstance(meta, dict):
            raise ExportError(f"{meta_path}: expected a JSON object (index metadata)")
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        expected = {"dim": int(embeddings.shape[1]), "count": int(len(embeddings)),
                    "export_version": int(export_version), "fingerprint": fingerprint(embeddings)}
        wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if wrong:
            details = "; ".join(f"{k}: index has {a}, export has {b}" for k, (a, b) in wrong.items())
            raise IndexMismatchError(f"the index in {folder} was built for other item embeddings "
                                     f"({details}); rebuild it with tte-index")
        backend = get_backend(meta["backend"]).load(folder, embeddings)
        if search_params:
            backend.set_search_params(**search_params)
        return cls(backend, embeddings, ids, meta.get("notes", ()))
