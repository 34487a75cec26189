"""Recommendations from an export: user tower -> ANN candidates -> exact dot products -> top k.

May import: tte_tfrs.exports (the reader), tte_tfrs.retrieval.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf

from tte_tfrs import ids
from tte_tfrs.errors import TteError
from tte_tfrs.exports.reader import ExportReader, RatedItems, read_consistent
from tte_tfrs.retrieval import DEFAULT_BACKEND, ItemIndex


class RecommendationError(TteError, ValueError):
    """A request cannot be answered: unknown user, bad feature value, k out of range."""


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """One recommended item.

    Attributes:
      rank: 1 for the best item.
      item_id: the item's id (ISBN for Book-Crossing).
      score: the predicted rating, <user embedding, item embedding>.
      title: the item's title, or "" when the data set had none.
    """

    rank: int
    item_id: str
    score: float
    title: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class UserQuery:
    """One user's validated tower inputs (from `Recommender.prepare`).

    Attributes:
      user_id: the normalised user id, or None for a new user given by features only.
      inputs: one value per user tower input, already of the input's type.
    """

    user_id: str | None
    inputs: dict[str, Any]


def normalize_user_id(user_id: Any) -> str | None:
    """The one form of a user id every lookup uses (`tte_tfrs.ids.canonical_id`, the twin of the
    user tower's own normalisation).

    Raises:
      RecommendationError: an id no export can hold (too long, or a control character).
    """
    if user_id is None:
        return None
    canonical = ids.canonical_id(user_id)
    problem = ids.id_problem(canonical)
    if problem:
        raise RecommendationError(f"user id {canonical[:40]!r} {problem}")
    return canonical


def arrow_strings(column: pd.Series) -> pa.Array:
    """A pandas string column as one Arrow string array (zero-copy for pandas' Arrow strings):
    a few bytes a value where a numpy object array holds a Python string per value."""
    array = pa.array(column.array, from_pandas=True)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array.cast(pa.large_string())


class SortedIds:
    """Positions of the ids of an Arrow string array, found by binary search over their sorted
    order: an int64 permutation instead of a dict of Python strings (16 MB for 2M ids, where a
    dict or pandas index of them takes about 250 MB; about 15 microseconds a search)."""

    def __init__(self, values: pa.Array):
        self._values = values
        self._order = pc.sort_indices(values).to_numpy()      # UTF-8 byte order = str order

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, rank: int) -> str:
        return self._values[int(self._order[rank])].as_py()

    def find(self, key: str) -> int | None:
        """The position of `key` in the array, or None (also for a key that is no string)."""
        if not isinstance(key, str):
            return None
        rank = bisect.bisect_left(self, key)
        if rank < len(self) and self[rank] == key:
            return int(self._order[rank])
        return None


class Recommender:
    """Answers recommendation requests for one exported version.

    Build it with `Recommender.load`. Requests name a known user by id, or give raw user features
    (a new user with no id, or overrides for a known one). Items the user has rated are skipped
    unless ``exclude_rated=False``. Identical embeddings give identical rankings: scores are exact
    dot products and ties go to the lower item id.
    """

    def __init__(self, reader: ExportReader, user_tower: Any, index: ItemIndex):
        self.reader = reader
        self.manifest = reader.manifest
        self.version: int = reader.version
        self._user_tower = user_tower
        self.index = index
        items = reader.item_table.items
        self._titles = arrow_strings(items["title"]) if "title" in items else None
        self._specs = reader.user_inputs()
        users = reader.users
        # Known users' stored features as Arrow columns and a sorted-id search, no Python string
        # per user: one request reads one row without building a pandas Series (which costs
        # about a millisecond).
        self._user_columns = {name: arrow_strings(users[name]) for name in users.columns}
        self._user_ids = SortedIds(self._user_columns["user_id"])
        self._rated: RatedItems = reader.rated

    @classmethod
    def load(cls, output_dir: str, backend: str = DEFAULT_BACKEND,
             search_params: Mapping[str, Any] | None = None,
             build_if_missing: bool = True, version: int | None = None) -> Recommender:
        """Loads the current export of `output_dir` (or `version`) and its `backend` index.

        Args:
          output_dir: an export root written by tte-train.
          backend: ``faiss-ivfpq``, ``scann``, ``faiss-hnsw`` or ``exact``.
          search_params: search-time overrides for the backend, e.g. ``{"nprobe": 64}``.
          build_if_missing: build the index in memory (with default settings) when none was saved.
          version: the version to load; None means the current one (``manifest.json``).

        Raises:
          ExportError: no export there, or a damaged one. IndexMismatchError: the saved index
          belongs to other embeddings. ConfigError: unknown backend, or ScaNN not installed.
        """
        def load(reader: ExportReader) -> Recommender:
            table = reader.item_table
            folder = reader.index_folder(backend)
            if os.path.exists(folder) or not build_if_missing:
                index = ItemIndex.load(folder, table.embeddings, table.ids, reader.version,
                                       search_params)
            else:
                index = ItemIndex.build(table.embeddings, table.ids, backend,
                                        search_params=search_params)
                index.notes.append(f"no saved {backend} index for version {reader.version}; built "
                                   "one in memory (save it with tte-index)")
            return cls(reader, reader.serving_function("user_tower"), index)   # reads users, rated

        if version is not None:                  # a pinned version: no retry on another one
            return load(ExportReader(output_dir, version))
        return read_consistent(output_dir, load)

    @property
    def users_with_ratings(self) -> np.ndarray:
        """Ids of the users the export knows interactions of, sorted."""
        return self._rated.user_ids

    def has_user(self, user_id: Any) -> bool:
        """Whether `user_id` is one of the export's known users (with stored features)."""
        return self._user_ids.find(normalize_user_id(user_id)) is not None

    @property
    def catalogue_size(self) -> int:
        return len(self.index.ids)

    def rated_rows(self, user_id: Any) -> np.ndarray:
        """Catalogue rows the user has rated or interacted with (empty for unknown users)."""
        return self._rated.of(normalize_user_id(user_id))

    def user_features(self, user_id: Any = None,
                      features: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The raw tower inputs for one request, validated; see `recommend`."""
        features = dict(features or {})
        unknown = sorted(set(features) - set(self._specs))
        if unknown:
            raise RecommendationError(f"unknown user feature(s) {', '.join(unknown)}; the user tower "
                                      f"takes {', '.join(self._specs)}")
        row = {}
        if user_id is not None:
            user_id = normalize_user_id(user_id)
            position = self._user_ids.find(user_id)
            if position is not None:
                row = {name: column[position].as_py()
                       for name, column in self._user_columns.items()}
            elif len(features) == 0:
                raise RecommendationError(
                    f"unknown user id {user_id!r}: not in this export's users. Give the user's "
                    f"features instead ({', '.join(n for n in self._specs if n != 'user_id')}) to "
                    "recommend for a new user.")
            row["user_id"] = user_id
        elif not features:
            raise RecommendationError("give a user id or user features")
        row.update(features)
        values = {}
        for name, spec in self._specs.items():
            value = row.get(name)
            if spec["dtype"] == "float32":
                values[name] = _as_float(name, value)
            else:
                values[name] = _as_text(name, value)
        return values

    def prepare(self, user_id: Any = None, features: Mapping[str, Any] | None = None) -> UserQuery:
        """One request's user, validated once (see `recommend`), for the ``*_queries`` methods.

        Raises:
          RecommendationError: unknown user without features, unknown feature or bad value.
        """
        return UserQuery(normalize_user_id(user_id), self.user_features(user_id, features))

    def has_item(self, item_id: Any) -> bool:
        """Whether `item_id` is in this version's catalogue."""
        return self._item_row(str(item_id)) >= 0

    def _item_row(self, item_id: str) -> int:
        """The catalogue row of `item_id` (rows are sorted by id: a binary search), or -1."""
        ids = self.index.ids
        row = int(np.searchsorted(ids, item_id))
        return row if row < len(ids) and ids[row] == item_id else -1

    def item_rows(self, item_ids: Sequence[Any]) -> np.ndarray:
        """Catalogue rows of `item_ids`, in their order.

        Raises:
          RecommendationError: an id that is not in the catalogue.
        """
        rows = [self._item_row(str(item_id)) for item_id in item_ids]
        unknown = [str(i) for i, row in zip(item_ids, rows) if row < 0]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise RecommendationError(f"{len(unknown)} unknown item id(s): {shown}; not in this "
                                      f"version's catalogue of {self.catalogue_size} items")
        return np.asarray(rows, dtype=np.int64)

    def embed_queries(self, queries: Sequence[UserQuery]) -> np.ndarray:
        """User embeddings float32 [len(queries), dim]: one user tower call."""
        if not queries:
            return np.zeros((0, self.index.embeddings.shape[1]), np.float32)
        return self.user_embeddings([q.inputs for q in queries])

    def score(self, user_id: Any = None, features: Mapping[str, Any] | None = None,
              item_ids: Sequence[Any] = ()) -> np.ndarray:
        """Predicted ratings of one user for `item_ids` (float32, in their order): the exact dot
        product of the user's and each item's embedding, as the exported scorer computes.

        Raises:
          RecommendationError: a bad user (see `recommend`) or an unknown item id.
        """
        rows = self.item_rows(item_ids)
        query = self.embed_queries([self.prepare(user_id, features)])[0]
        return self.index.embeddings[rows] @ query

    def user_embeddings(self, requests: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """User embeddings [len(requests), dim] for a list of feature dicts from `user_features`."""
        inputs = {}
        for name, spec in self._specs.items():
            column = [r[name] for r in requests]
            dtype = tf.float32 if spec["dtype"] == "float32" else tf.string
            inputs[name] = tf.constant(column, dtype=dtype)
        return self._user_tower(**inputs)["embedding"].numpy()

    def recommend(self, user_id: Any = None, features: Mapping[str, Any] | None = None,
                  k: int = 10, exclude_rated: bool = True) -> list[Recommendation]:
        """Top-k items for one user.

        Args:
          user_id: a known user's id; its stored features are used (and `features` override them).
            An unknown id needs `features`; it then falls back to the out-of-vocabulary slot.
          features: raw user features by name (e.g. ``{"location": "porto, , portugal",
            "age": 31}``); missing ones count as unknown.
          k: number of items, 1 to the catalogue size.
          exclude_rated: skip items the user has rated (known users only).

        Returns:
          A list of `Recommendation`, best first.

        Raises:
          RecommendationError: unknown user without features, unknown feature, bad value or k.
        """
        return self.recommend_batch([user_id], [features], k, exclude_rated)[0]

    def recommend_batch(self, user_ids: Sequence[Any] | None = None,
                        features: Sequence[Mapping[str, Any] | None] | None = None,
                        k: int = 10, exclude_rated: bool = True) -> list[list[Recommendation]]:
        """`recommend` for many users at once: one tower call and one batched search."""
        k = self.check_k(k)
        count = len(user_ids if user_ids is not None else features)
        user_ids = list(user_ids) if user_ids is not None else [None] * count
        features = list(features) if features is not None else [None] * count
        if len(user_ids) != len(features):
            raise RecommendationError(f"{len(user_ids)} user ids but {len(features)} feature sets")
        return self.recommend_queries([self.prepare(u, f) for u, f in zip(user_ids, features)],
                                      k, exclude_rated)

    def recommend_queries(self, queries: Sequence[UserQuery], k: int = 10,
                          exclude_rated: bool = True) -> list[list[Recommendation]]:
        """`recommend_batch` for users already validated by `prepare`: one tower call and one
        batched search; the same answers as `recommend` for each user alone."""
        k = self.check_k(k)
        if not queries:
            return []
        embeddings = self.embed_queries(queries)
        excluded = [self.rated_rows(q.user_id) if exclude_rated and q.user_id is not None
                    else np.zeros(0, np.int64) for q in queries]
        scores, rows = self.index.search(embeddings, k, excluded)
        ids, titles, results = self.index.ids, self._titles, []
        for query_scores, query_rows in zip(scores, rows):
            valid = query_rows >= 0                    # lists: no numpy scalar per item
            results.append([Recommendation(rank=n + 1, item_id=str(ids[row]), score=score,
                                           title=titles[row].as_py() if titles is not None else "")
                            for n, (score, row) in enumerate(zip(query_scores[valid].tolist(),
                                                                 query_rows[valid].tolist()))])
        return results

    def check_k(self, k: Any) -> int:
        """`k` as an int, checked to be a whole number from 1 to the catalogue size.

        Raises:
          RecommendationError: anything else.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise RecommendationError(f"k must be a whole number, got {k!r}")
        if not 1 <= k <= self.catalogue_size:
            raise RecommendationError(f"k must be between 1 and the catalogue size "
                                      f"({self.catalogue_size}), got {k}")
        return int(k)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


MAX_FEATURE_CHARS = 4096


def _as_text(name: str, value: Any) -> str:
    if value is None or _is_nan(value):
        return ""
    text = str(value)
    if len(text) > MAX_FEATURE_CHARS:
        raise RecommendationError(f"user feature {name!r} is longer than {MAX_FEATURE_CHARS} "
                                  "characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RecommendationError(f"user feature {name!r} is not valid Unicode text") from None
    return text


def _as_float(name: str, value: Any) -> float:
    if value is None or (isinstance(value, str) and value.strip() in ("", "nan", "NaN")):
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise RecommendationError(f"user feature {name!r} must be a number (float32), got "
                                  f"{str(value)[:40]!r}") from None
