"""The one interface every retrieval backend implements, and the checks of its settings."""

from __future__ import annotations

import abc
import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from tte_tfrs.errors import ConfigError, ExportError
from tte_tfrs.exports.reader import read_json
from tte_tfrs.retrieval.scoring import top_k_rows

__all__ = ["Backend", "Setting", "check_settings", "merge_params", "top_k_rows"]

PARAMS_FILE = "backend.json"


@dataclasses.dataclass(frozen=True)
class Setting:
    """The range of one build or search setting.

    Attributes:
      low: smallest allowed value (numbers).
      high: largest allowed value (None: no limit).
      kind: ``int``, ``float`` or ``str``.
      help: what the setting does (for messages and flags).
      choices: the allowed values of a ``str`` setting (empty: any text without control characters).
      prefixes: a ``str`` setting is empty or starts with one of these (when given).
    """

    low: float = 0
    high: float | None = None
    kind: type = int
    help: str = ""
    choices: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()

    def check(self, name: str, value: Any) -> int | float | str:
        """`value` as this setting's type, or a ConfigError naming `name` and the range."""
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices) or any(
                    ord(c) < 32 for c in value) or (
                    self.prefixes and value and not value.startswith(self.prefixes)):
                allowed = (f"one of {', '.join(self.choices)}" if self.choices else
                           f"empty or start with {', '.join(self.prefixes)}" if self.prefixes
                           else "text")
                raise ConfigError(f"{name} must be {allowed}, got {value!r}", field=name)
            return value
        wanted = "a whole number" if self.kind is int else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ConfigError(f"{name} must be {wanted}, got {value!r}", field=name)
        if self.kind is int and float(value) != int(value):
            raise ConfigError(f"{name} must be {wanted}, got {value!r}", field=name)
        value = self.kind(value)
        if not np.isfinite(value) or value < self.low or (self.high is not None and value > self.high):
            upper = f" and at most {self.high:g}" if self.high is not None else ""
            raise ConfigError(f"{name} must be at least {self.low:g}{upper}, got {value!r}", field=name)
        return value


def check_settings(backend: str, kind: str, spec: Mapping[str, Setting],
                   values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` checked against `spec`: every name known, every value in range.

    Raises:
      ConfigError: an unknown name or a value out of range, naming the setting.
    """
    checked = {}
    for name, value in values.items():
        if name not in spec:
            raise ConfigError(f"{backend} has no {kind} setting {name!r}; it has: "
                              + ", ".join(sorted(spec)), field=name)
        checked[name] = spec[name].check(name, value)
    return checked


class Backend(abc.ABC):
    """Candidate search over a fixed matrix of item embeddings by inner product.

    Build-time settings (``build_params``) shape the index and are fixed once it is built;
    search-time settings (``search_params``) can change between queries with `set_search_params`.
    Each backend declares their ranges (`BUILD`, `SEARCH`); every value is checked when an index
    is built, loaded or re-tuned. Results always come in the package's one order: ``(scores,
    rows)``, best first, where rows index the embedding matrix and -1 marks "no result"; ``search``
    returns at least k columns (the exact backend adds every item tied with the k-th). Scores are
    the backend's own estimates; `tte_tfrs.retrieval.ItemIndex` re-scores candidates exactly.
    """

    name = ""
    BUILD: Mapping[str, Setting] = {}
    SEARCH: Mapping[str, Setting] = {}

    def __init__(self, build_params: Mapping[str, Any], search_params: Mapping[str, Any]):
        self.build_params = check_settings(self.name, "build", self.BUILD, build_params)
        self.search_params = check_settings(self.name, "search", self.SEARCH, search_params)
        self.item_ids: np.ndarray | None = None     # only backends that store items by id use them

    @classmethod
    @abc.abstractmethod
    def default_params(cls, count: int, dim: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(build_params, search_params) suited to `count` items of dimension `dim`."""

    @classmethod
    def minimum_items(cls, build_params: Mapping[str, Any]) -> int:
        """The fewest items a trained index can be built from (0: no training needed)."""
        return 0

    @classmethod
    def check_build(cls, build_params: Mapping[str, Any], count: int, dim: int) -> None:
        """Checks settings that depend on each other or on the catalogue (ConfigError if not)."""
        return None

    @classmethod
    def settings(cls, count: int, dim: int, build_params: Mapping[str, Any] | None = None,
                 search_params: Mapping[str, Any] | None = None) -> tuple[dict, dict]:
        """The defaults for this catalogue with `build_params`/`search_params` applied, checked.

        Raises:
          ConfigError: an unknown setting or a value out of range, naming the setting.
        """
        build_defaults, search_defaults = cls.default_params(count, dim)
        build = merge_params(cls.name, "build", build_defaults, build_params)
        search = merge_params(cls.name, "search", search_defaults, search_params)
        check_settings(cls.name, "build", cls.BUILD, build)
        check_settings(cls.name, "search", cls.SEARCH, search)
        cls.check_build(build, count, dim)
        return build, search

    @classmethod
    def build(cls, embeddings: np.ndarray, build_params: Mapping[str, Any] | None = None,
              search_params: Mapping[str, Any] | None = None, ids: np.ndarray | None = None) -> Backend:
        """Builds an index over float32 `embeddings` [items, dim] (item `ids`, one per row, for
        backends that store items by id).

        Raises:
          ConfigError: an unknown setting or a value out of range.
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        build, search = cls.settings(*embeddings.shape, build_params, search_params)
        backend = cls(build, search)
        backend.item_ids = ids
        backend._build(embeddings)
        return backend

    @abc.abstractmethod
    def _build(self, embeddings: np.ndarray) -> None:
        """Builds the index structures."""

    def reencoded(self, embeddings: np.ndarray, previous_embeddings: np.ndarray,
                  ids: np.ndarray | None = None) -> tuple[Backend | None, str]:
        """This index's trained structures applied to new `embeddings`, when they still fit them.

        An update changes every item's embedding a little and adds items; an index whose trained
        part (clusters, codebooks) still suits the new vectors can re-encode them without training.

        Args:
          embeddings: float32 [items, dim], the new catalogue.
          previous_embeddings: the matrix this index was built from.
          ids: the new catalogue's item ids (backends that store items by id update only the
            items that changed, were added or were removed).

        Returns:
          (backend or None, reason): None when the index must be rebuilt, and why.
        """
        return None, f"{self.name} has no trained part to keep; rebuilt"

    def set_search_params(self, **params: Any) -> None:
        """Changes search-time settings (e.g. nprobe); unknown names or bad values raise ConfigError."""
        merged = merge_params(self.name, "search", self.search_params, params)
        self.search_params = check_settings(self.name, "search", self.SEARCH, merged)

    def calibration_ladders(self, k: int) -> list[list[tuple[dict[str, Any], int]]]:
        """Ladders of (search settings, candidates re-ranked per result), each rung more thorough
        and slower than the one before, for `tte_tfrs.retrieval.calibration` (none: nothing to
        tune)."""
        return []

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the (approximately) best `k` items for each query row."""

    def save(self, folder: str) -> None:
        """Writes the index into `folder` (created if needed)."""
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, PARAMS_FILE), "w", encoding="utf-8") as f:
            json.dump({"backend": self.name, "build_params": self.build_params,
                       "search_params": self.search_params}, f, indent=2)
        self._save(folder)

    @classmethod
    def load(cls, folder: str, embeddings: np.ndarray, ids: np.ndarray | None = None) -> Backend:
        """Reads an index written by `save`; `embeddings` are the matrix it was built from.

        Raises:
          ExportError: the settings file is missing, damaged or holds a setting out of range, or
            the index file is damaged; the message names the file.
        """
        path = os.path.join(folder, PARAMS_FILE)
        params = read_json(path, f"{cls.name} index settings")
        if not isinstance(params, dict) or not all(
                isinstance(params.get(key), dict) for key in ("build_params", "search_params")):
            raise ExportError(f"{path}: expected build_params and search_params objects; rebuild "
                              "the index with tte-index")
        try:
            backend = cls(params["build_params"], params["search_params"])
        except ConfigError as exc:
            raise ExportError(f"{path}: {exc}; rebuild the index with tte-index") from None
        backend.item_ids = ids
        backend._load(folder, np.ascontiguousarray(embeddings, dtype=np.float32))
        return backend

    @abc.abstractmethod
    def _save(self, folder: str) -> None:
        """Writes the backend's own files."""

    def describe(self) -> dict[str, Any]:
        """What else a saved index records about itself (e.g. a database's address)."""
        return {}

    @abc.abstractmethod
    def _load(self, folder: str, embeddings: np.ndarray) -> None:
        """Reads the backend's own files; a damaged one raises ExportError naming it."""

    def close(self) -> None:  # noqa: B027 - a no-op unless the backend holds outside resources
        """Releases outside resources (a database connection); a no-op for in-process indexes."""


def effort_rungs(most: int, least: int = 1) -> list[int]:
    """Whole numbers from `least` to `most`: powers of two and 1.5 times them (1, 2, 3, 4, 6, 8,
    12, 16, 24, ...), then `most` itself."""
    values = {v for p in range(40) for v in (1 << p, 3 << p >> 1) if least <= v < most}
    return sorted(values | {least} if least < most else values) + [int(most)]


def merge_params(name: str, kind: str, defaults: Mapping[str, Any],
                 overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """`defaults` with the non-None `overrides` applied; an unknown name raises ConfigError."""
    merged = dict(defaults)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in merged:
            raise ConfigError(f"{name} has no {kind} setting {key!r}; it has: "
                              + ", ".join(sorted(merged)), field=key)
        merged[key] = value
    return merged
