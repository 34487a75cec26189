"""The one interface every retrieval backend implements."""

import abc
import json
import os

import numpy as np

PARAMS_FILE = "backend.json"


class Backend(abc.ABC):
    """Candidate search over a fixed matrix of item embeddings by inner product.

    Build-time settings (``build_params``) shape the index and are fixed once it is built;
    search-time settings (``search_params``) can change between queries with `set_search_params`.
    Results always come in the package's one order: ``(scores, rows)``, both shaped
    ``[queries, k]``, best first, where rows index the embedding matrix and -1 marks "no result".
    Scores are the backend's own estimates; `tte_tfrs.retrieval.ItemIndex` re-scores exactly.
    """

    name = ""

    def __init__(self, build_params, search_params):
        self.build_params = dict(build_params)
        self.search_params = dict(search_params)

    @classmethod
    @abc.abstractmethod
    def default_params(cls, count, dim):
        """(build_params, search_params) suited to `count` items of dimension `dim`."""

    @classmethod
    def minimum_items(cls, build_params):
        """The fewest items a trained index can be built from (0: no training needed)."""
        return 0

    @classmethod
    def build(cls, embeddings, build_params=None, search_params=None):
        """Builds an index over float32 `embeddings` [items, dim]; unknown params raise ValueError."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        build_defaults, search_defaults = cls.default_params(*embeddings.shape)
        build = merge_params(cls.name, "build", build_defaults, build_params)
        search = merge_params(cls.name, "search", search_defaults, search_params)
        backend = cls(build, search)
        backend._build(embeddings)
        return backend

    @abc.abstractmethod
    def _build(self, embeddings):
        """Builds the index structures."""

    def reencoded(self, embeddings, previous_embeddings):
        """This index's trained structures applied to new `embeddings`, when they still fit them.

        An update changes every item's embedding a little and adds items; an index whose trained
        part (clusters, codebooks) still suits the new vectors can re-encode them without training.

        Args:
          embeddings: float32 [items, dim], the new catalogue.
          previous_embeddings: the matrix this index was built from.

        Returns:
          (backend or None, reason): None when the index must be rebuilt, and why.
        """
        return None, f"{self.name} has no trained part to keep; rebuilt"

    def set_search_params(self, **params):
        """Changes search-time settings (e.g. nprobe); unknown names raise ValueError."""
        self.search_params = merge_params(self.name, "search", self.search_params, params)

    @abc.abstractmethod
    def search(self, queries, k):
        """(scores, rows) of the (approximately) best `k` items for each query row."""

    def save(self, folder):
        """Writes the index into `folder` (created if needed)."""
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, PARAMS_FILE), "w", encoding="utf-8") as f:
            json.dump({"backend": self.name, "build_params": self.build_params,
                       "search_params": self.search_params}, f, indent=2)
        self._save(folder)

    @classmethod
    def load(cls, folder, embeddings):
        """Reads an index written by `save`; `embeddings` are the matrix it was built from."""
        with open(os.path.join(folder, PARAMS_FILE), encoding="utf-8") as f:
            params = json.load(f)
        backend = cls(params["build_params"], params["search_params"])
        backend._load(folder, np.ascontiguousarray(embeddings, dtype=np.float32))
        return backend

    @abc.abstractmethod
    def _save(self, folder):
        """Writes the backend's own files."""

    @abc.abstractmethod
    def _load(self, folder, embeddings):
        """Reads the backend's own files."""


def merge_params(name, kind, defaults, overrides):
    merged = dict(defaults)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in merged:
            raise ValueError(f"{name} has no {kind} setting {key!r}; it has: "
                             + ", ".join(sorted(merged)))
        merged[key] = type(merged[key])(value) if merged[key] is not None else value
    return merged


def top_k_rows(scores, k):
    """Rows of the `k` highest scores per query row, best first; ties go to the lower row."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        # Rows tied with the k-th score may be cut arbitrarily by argpartition: take them all.
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
        rows = [np.flatnonzero(s >= t) for s, t in zip(scores, kth[:, 0])]
    else:
        rows = [np.arange(scores.shape[1]) for _ in range(scores.shape[0])]
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for q, candidates in enumerate(rows):
        order = np.lexsort((candidates, -scores[q, candidates]))
        out[q] = candidates[order[:k]]
    return out
