"""The one reader of export folders: every consumer (recommending, indexing, evaluating, updating)
opens a version through `ExportReader`, which validates everything it reads.

Nothing read from the folder is trusted:

- the manifest is checked key by key (types, ranges, names); the paths it records are never
  used: every path is built from the layout's names and the version number, a positive whole
  number, and every file, folder and link opened is checked (after resolving links) to stay inside
  the export root;
- every data file is checked for what its consumers rely on: JSON that parses (no NaN), numpy files
  without pickles of the right dtype and shape and finite, CSV tables with their key column and
  unique, well-formed ids, item ids that agree with the embeddings row by row;
- a missing, damaged or inconsistent file raises `ExportError` naming the file and what was
  expected; a version that disappears while it is read (pruned or rolled back by a writer) raises
  `VersionGoneError`, and `read_consistent` then reads the new current version.

A reader is pinned to one version when it is opened (the current one unless asked otherwise), so a
new export, a prune or a rollback while it reads never mixes two versions.

May import: tte_tfrs.errors, tte_tfrs.ids, tte_tfrs.exports.layout (numpy, pandas; no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from tte_tfrs import ids
from tte_tfrs.errors import ExportError
from tte_tfrs.exports.layout import (
    CHECKPOINT,
    EMBEDDINGS,
    EMBEDDINGS_FILE,
    FORMAT_VERSION,
    INDEX_ROOT,
    ITEM_IDS_FILE,
    ITEMS_FILE,
    MANIFEST,
    MANIFESTS,
    MODELS,
    OPTIMIZER_FILE,
    RATED_FILE,
    USERS,
    USERS_FILE,
    VERSIONED,
    VOCABULARIES_FILE,
    WEIGHTS_FILE,
)

# Keys every manifest has; a manifest without them was not written by `tte_tfrs.export`.
MANIFEST_KEYS = ("version", "embedding_dim", "signatures", "dataset", "config")
MAX_VERSION = 10 ** 15
MAX_JSON_BYTES = 1 << 30
DTYPES = ("string", "float32")
_BACKEND_NAME = re.compile(r"[a-z][a-z0-9-]{0,40}")
_INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_NOT_NUMBER = ("", "nan", "NaN")
T = TypeVar("T")


class VersionGoneError(ExportError):
    """The version a reader is pinned to was removed (pruned or rolled back) while it was read."""


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def read_json(path: str, what: str) -> Any:
    """Parses a JSON file, raising ExportError naming it when it is missing, too large or not
    valid JSON (NaN and Infinity included)."""
    try:
        if os.path.getsize(path) > MAX_JSON_BYTES:
            raise ExportError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB; not a {what}")
        with open(path, encoding="utf-8") as f:
            return json.load(f, parse_constant=_no_constant)
    except FileNotFoundError:
        raise ExportError(f"{path}: missing ({what})") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ExportError(f"{path}: not a valid {what} ({type(exc).__name__}: {exc})") from None


def check_version(value: Any, where: str) -> int:
    """`value` as a version number: a positive whole number (never a path or a string).

    Raises:
      ExportError: anything else, naming `where`.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < MAX_VERSION:
        raise ExportError(f"{where}: version must be a positive whole number, got {value!r:.80}")
    return value


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _manifest_problems(manifest: dict) -> list[str]:
    """What is wrong with a manifest's keys (empty when nothing is)."""
    problems = []

    def need(holds: bool, what: str) -> None:
        if not holds:
            problems.append(what)

    need(_whole(manifest["embedding_dim"], 3), "embedding_dim must be a whole number >= 3")
    signatures, dataset = manifest["signatures"], manifest["dataset"]
    need(isinstance(manifest["config"], dict), "config must be a JSON object")
    need(isinstance(signatures, dict), "signatures must be a JSON object")
    need(isinstance(dataset, dict), "dataset must be a JSON object")
    if problems:
        return problems
    for model in MODELS:
        inputs = signatures.get(model, {}).get("inputs") if isinstance(signatures.get(model),
                                                                       dict) else None
        if not isinstance(inputs, dict) or not inputs:
            problems.append(f"signatures.{model}.inputs must be a non-empty JSON object")
            continue
        for name, spec in inputs.items():
            need(bool(_INPUT_NAME.fullmatch(name)),
                 f"signatures.{model}.inputs: {name!r:.80} is not a feature name")
            need(isinstance(spec, dict) and spec.get("dtype") in DTYPES
                 and isinstance(spec.get("kind"), str),
                 f"signatures.{model}.inputs.{name:.80} needs a dtype ({' or '.join(DTYPES)}) "
                 "and a kind")
    scale = dataset.get("rating_scale")
    need(isinstance(scale, list) and len(scale) == 2 and all(map(_number, scale))
         and scale[0] < scale[1], "dataset.rating_scale must be [lowest, highest]")
    need(isinstance(dataset.get("name", ""), str), "dataset.name must be a string")
    hashes = dataset.get("split_hashes", {})
    need(isinstance(hashes, dict) and all(isinstance(v, str) for v in hashes.values()),
         "dataset.split_hashes must map split names to strings")
    items = manifest.get("item_embeddings", {})
    need(isinstance(items, dict) and _whole(items.get("count", 1), 1),
         "item_embeddings.count must be a whole number >= 1")
    need(_whole(manifest.get("retrieval_k", 1), 1), "retrieval_k must be a whole number >= 1")
    parent = manifest.get("parent_version")
    need(parent is None or (_whole(parent, 1) and parent < MAX_VERSION),
         "parent_version must be a version number or null")
    indexes = manifest.get("indexes", {})
    need(isinstance(indexes, dict) and all(isinstance(k, str) and _BACKEND_NAME.fullmatch(k)
                                           and isinstance(v, dict) for k, v in indexes.items()),
         "indexes must map backend names to JSON objects")
    return problems


def validate_manifest(manifest: Any, path: str) -> dict:
    """Checks every key a consumer relies on; returns the manifest.

    Raises:
      ExportError: not a JSON object, a key missing, or a value of the wrong type or out of range,
        naming the file and the key.
    """
    if not isinstance(manifest, dict):
        raise ExportError(f"{path}: expected a JSON object (an export manifest)")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ExportError(f"{path}: not an export manifest: missing {', '.join(missing)}")
    check_version(manifest["version"], path)
    written_format = manifest.get("format_version", 1)
    if isinstance(written_format, bool) or not isinstance(written_format, int) or \
            written_format > FORMAT_VERSION:
        raise ExportError(f"{path}: export format {written_format!r:.40} was written by a newer "
                          f"tte_tfrs (this one reads up to format {FORMAT_VERSION}); upgrade tte_tfrs")
    problems = _manifest_problems(manifest)
    if problems:
        raise ExportError(f"{path}: damaged manifest: {problems[0]}")
    return manifest


def manifest_path(root: str, version: int | None = None) -> str:
    """The current manifest, or the one kept for `version`."""
    if version is None:
        return os.path.join(root, MANIFEST)
    return os.path.join(root, MANIFESTS, f"{check_version(version, root)}.json")


def read_manifest(root: str, version: int | None = None) -> dict:
    """The validated manifest of the current version of `root` (or of `version`).

    Raises:
      ExportError: no export there, or a manifest that is damaged or not a manifest.
    """
    path = manifest_path(root, version)
    _inside(root, path)
    if not os.path.exists(path):
        if version is None:
            raise ExportError(f"{root} holds no export ({MANIFEST} is missing); train one with "
                              f"tte-train --output_dir={root}")
        raise ExportError(f"{path}: missing: {root} has no version {version}")
    manifest = validate_manifest(read_json(path, "export manifest"), path)
    if version is not None and manifest["version"] != version:
        raise ExportError(f"{path}: records version {manifest['version']}, expected {version}")
    return manifest


def current_version(root: str) -> int | None:
    """The version ``manifest.json`` names, or None when there is no export yet."""
    if not os.path.lexists(os.path.join(root, MANIFEST)):
        return None
    return read_manifest(root)["version"]


def _inside(root: str, path: str) -> str:
    """`path`, refusing it when it (after resolving links) leaves `root`."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ExportError(f"{path}: points outside the export folder {root}; refusing to read it")
    return path


@dataclasses.dataclass(frozen=True)
class ItemTable:
    """The catalogue of one version, rows sorted by item id.

    Attributes:
      embeddings: float32 [items, k + 2], row r embeds item ``ids[r]``.
      ids: item ids (object array of str).
      items: the item features, one row per id (``item_id`` first), as strings.
    """

    embeddings: np.ndarray
    ids: np.ndarray
    items: pd.DataFrame

    @property
    def titles(self) -> np.ndarray:
        """Each item's title, or "" when the data set has none."""
        if "title" in self.items:
            return self.items["title"].astype(str).to_numpy(dtype=object)
        return np.full(len(self.ids), "", dtype=object)


@dataclasses.dataclass(frozen=True)
class RatedItems:
    """Who interacted with what, compressed: user ``user_ids[u]`` interacted with catalogue rows
    ``rows[offsets[u]:offsets[u + 1]]``.

    Attributes:
      user_ids: sorted user ids (a numpy str array: fixed width, no Python string per id), in
        canonical form.
      offsets: int64 [users + 1], non-decreasing, from 0 to len(rows).
      rows: int64 catalogue rows.
    """

    user_ids: np.ndarray
    offsets: np.ndarray
    rows: np.ndarray

    def of(self, user_id: Any) -> np.ndarray:
        """Catalogue rows of `user_id` (any spelling `tte_tfrs.ids.canonical_id` accepts; empty for
        users without interactions), found by binary search over the sorted ids."""
        key = ids.canonical_id(user_id)
        position = int(np.searchsorted(self.user_ids, key)) if key is not None else 0
        if key is None or position >= len(self.user_ids) or self.user_ids[position] != key:
            return np.zeros(0, np.int64)
        return self.rows[self.offsets[position]:self.offsets[position + 1]]


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A version's trainable state, for warm starts.

    Attributes:
      vocabularies: {vocabulary name: values in embedding-row order (row 0 is the unknown slot)}.
      weights: {weight key: float array}.
      optimizer_state: {weight key: Adagrad accumulator}, empty when none was saved.
    """

    vocabularies: dict[str, list[str]]
    weights: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]


class ExportReader:
    """One version of an export folder, validated as it is read.

    Args:
      root: the export root written by `tte_tfrs.export`.
      version: the version to read; None means the current one (``manifest.json``).

    Raises:
      ExportError: no export, or a manifest that cannot be used.
    """

    def __init__(self, root: str | os.PathLike, version: int | None = None):
        self.root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise ExportError(f"{self.root} holds no export (it is not a folder); train one with "
                              f"tte-train --output_dir={self.root}")
        self.manifest = read_manifest(self.root, version)
        self.version: int = self.manifest["version"]

    def __repr__(self) -> str:
        return f"ExportReader({self.root!r}, version={self.version})"

    # -- paths ---------------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        """``root/parts...``, refusing any path that would leave the export root.

        Raises:
          ExportError: the path escapes the root (e.g. through ``..`` or a link).
        """
        return _inside(self.root, os.path.join(self.root, *parts))

    def folder(self, part: str) -> str:
        """The version's folder of a versioned part (``user_tower``, ``users``, ...), checked to
        exist and to hold no link that leaves the root.

        Raises:
          VersionGoneError: the version was removed while this reader was open.
          ExportError: the folder is missing or not a folder.
        """
        folder = self.path(part, str(self.version))
        if not os.path.isdir(folder):
            self._gone_or(f"{folder}: missing or not a folder; the export is incomplete")
        self._check_links(folder)
        return folder

    def file(self, part: str, name: str) -> str:
        """A file of the version's `part` folder (checked like `folder`)."""
        self.folder(part)
        return self.path(part, str(self.version), name)

    def _check_links(self, folder: str) -> None:
        for top, dirs, files in os.walk(folder):
            for name in dirs + files:
                path = os.path.join(top, name)
                if os.path.islink(path):
                    _inside(self.root, path)

    def _gone_or(self, message: str) -> None:
        """Raises VersionGoneError when this reader's version is no longer the current one (a
        writer pruned or rolled it back meanwhile), else ExportError(message)."""
        try:
            now = current_version(self.root)
        except ExportError:
            now = None
        complete = all(os.path.isdir(os.path.join(self.root, part, str(self.version)))
                       for part in VERSIONED)
        if now != self.version and not complete:
            raise VersionGoneError(f"version {self.version} of {self.root} was removed while it "
                                   f"was being read (the current version is now {now}); open the "
                                   "export again")
        raise ExportError(message)

    def missing(self, path: str, detail: str = "missing") -> None:
        """Raises the right error for a file of this version that could not be read."""
        self._gone_or(f"{path}: {detail}")

    def saved_model(self, name: str) -> str:
        """Path of one of the version's SavedModels, checked to exist.

        Raises:
          ExportError: the folder is missing or holds no SavedModel.
        """
        if name not in MODELS:
            raise ExportError(f"{name!r} is not one of the exported models {', '.join(MODELS)}")
        folder = self.folder(name)
        if not os.path.isfile(self.path(name, str(self.version), "saved_model.pb")):
            self.missing(folder, "not a SavedModel (no saved_model.pb)")
        return folder

    def serving_function(self, name: str) -> Any:
        """The ``serving_default`` function of one of the version's SavedModels, loaded.

        Raises:
          VersionGoneError: the version was removed while it was loaded. ExportError: the SavedModel
            is damaged or has no ``serving_default`` signature.
        """
        import tensorflow as tf  # only here: reading tables and manifests needs no TensorFlow

        folder = self.saved_model(name)
        try:
            return tf.saved_model.load(folder).signatures["serving_default"]
        except (tf.errors.OpError, OSError, ValueError, KeyError, RuntimeError) as exc:
            self.missing(folder, f"cannot be loaded as a SavedModel with a serving_default "
                                 f"signature ({type(exc).__name__}: {str(exc)[:200]}); re-export "
                                 "the model")

    def index_folder(self, backend: str) -> str:
        """Where the version's `backend` index is (or would be) saved; links leaving the root are
        refused.

        Raises:
          ExportError: `backend` is not a plain backend name, or the folder leaves the root.
        """
        if not isinstance(backend, str) or not _BACKEND_NAME.fullmatch(backend):
            raise ExportError(f"{backend!r:.80} is not a backend name")
        folder = self.path(INDEX_ROOT, backend, str(self.version))
        if os.path.isdir(folder):
            self._check_links(folder)
        return folder

    def checkpoint_folder(self) -> str:
        return self.folder(CHECKPOINT)

    def user_inputs(self) -> dict[str, dict]:
        """The user tower's inputs by name: ``{"dtype": ..., "kind": ..., ...}``."""
        return self.manifest["signatures"]["user_tower"]["inputs"]

    # -- data ----------------------------------------------------------------------------------

    @functools.cached_property
    def item_table(self) -> ItemTable:
        """The catalogue: embeddings, ids and features, checked to agree.

        Raises:
          ExportError: a file is missing or damaged, or the three disagree in length or width.
        """
        path = self.file(EMBEDDINGS, EMBEDDINGS_FILE)
        embeddings = self._load_npy(path)
        dim = self.manifest["embedding_dim"]
        count = self.manifest.get("item_embeddings", {}).get("count", len(embeddings))
        if embeddings.ndim != 2 or embeddings.shape[1] != dim or embeddings.dtype != np.float32:
            raise ExportError(f"{path}: expected float32 [items, {dim}], found {embeddings.dtype} "
                              f"{list(embeddings.shape)}; re-export the model")
        if len(embeddings) != count:
            raise ExportError(f"{path}: {len(embeddings)} rows, but the manifest records {count} "
                              "items; re-export the model")
        if not np.isfinite(embeddings).all():
            raise ExportError(f"{path}: holds NaN or infinite values; re-export the model")
        ids_path = self.file(EMBEDDINGS, ITEM_IDS_FILE)
        item_ids = self._read_lines(ids_path)
        _check_ids(item_ids, ids_path, "item id", sorted_unique=True)
        items_path = self.file(EMBEDDINGS, ITEMS_FILE)
        items = self._read_csv(items_path, "item_id")
        if not len(item_ids) == len(items) == len(embeddings):
            raise ExportError(f"{os.path.dirname(path)}: {len(embeddings)} embeddings, "
                              f"{len(item_ids)} ids in {ITEM_IDS_FILE} and {len(items)} rows in "
                              f"{ITEMS_FILE}; they must agree (re-export the model)")
        if not items["item_id"].reset_index(drop=True).equals(pd.Series(item_ids, dtype=str)):
            raise ExportError(f"{items_path}: its item_id column does not list the ids of "
                              f"{ITEM_IDS_FILE} in the same order; re-export the model")
        return ItemTable(embeddings, np.asarray(item_ids, dtype=object), items)

    @functools.cached_property
    def users(self) -> pd.DataFrame:
        """Known users' features as strings, indexed by ``user_id`` (the column is kept): unique
        canonical ids, a column per user-tower input, numbers that parse.

        Raises:
          ExportError: the file is missing, damaged or lacks what the user tower needs.
        """
        path = self.file(USERS, USERS_FILE)
        users = self._read_csv(path, "user_id")
        _check_ids(users["user_id"], path, "user id", sorted_unique=False)
        if users["user_id"].duplicated().any():
            raise ExportError(f"{path}: a user id appears more than once; re-export the model")
        inputs = self.user_inputs()
        absent = [name for name in inputs if name not in users.columns]
        if absent:
            raise ExportError(f"{path}: lacks the column(s) {', '.join(absent)} the user tower "
                              "takes; re-export the model")
        for name, spec in inputs.items():
            if spec["dtype"] == "float32":
                column = users[name]
                bad = ~column.isin(_NOT_NUMBER) & pd.to_numeric(column, errors="coerce").isna()
                if bad.any():
                    raise ExportError(f"{path}: column {name!r} holds {column[bad].iloc[0]!r:.40}, "
                                      "not a number; re-export the model")
        return users.set_index("user_id", drop=False)

    @functools.cached_property
    def rated(self) -> RatedItems:
        """Who interacted with which catalogue rows, checked against the catalogue size.

        Raises:
          ExportError: the file is missing, damaged or inconsistent.
        """
        path = self.file(USERS, RATED_FILE)
        arrays = self._load_npz(path, ("user_ids", "offsets", "rows"))
        user_ids, offsets, rows = arrays["user_ids"], arrays["offsets"], arrays["rows"]
        count = self.manifest.get("item_embeddings", {}).get("count")
        problems = []
        if user_ids.ndim != 1 or offsets.ndim != 1 or rows.ndim != 1:
            problems.append("arrays must be one-dimensional")
        elif user_ids.dtype.kind != "U":
            problems.append(f"user_ids must be strings, found {user_ids.dtype}")
        elif not np.issubdtype(offsets.dtype, np.integer) or not np.issubdtype(rows.dtype,
                                                                                np.integer):
            problems.append("offsets and rows must be whole numbers")
        elif len(offsets) != len(user_ids) + 1:
            problems.append(f"{len(offsets)} offsets for {len(user_ids)} users (expected one more)")
        elif offsets[0] != 0 or offsets[-1] != len(rows) or np.any(np.diff(offsets) < 0):
            problems.append("offsets must rise from 0 to the number of rows")
        elif len(rows) and (rows.min() < 0 or (count is not None and rows.max() >= count)):
            problems.append("rows must be catalogue rows")
        elif len(user_ids) > 1 and not np.all(user_ids[1:] > user_ids[:-1]):
            problems.append("user_ids must be sorted and unique")
        if problems:
            raise ExportError(f"{path}: damaged: {problems[0]}; re-export the model")
        _check_ids(user_ids, path, "user id", sorted_unique=False)    # one id at a time
        return RatedItems(user_ids, offsets.astype(np.int64), rows.astype(np.int64))

    def interactions(self) -> pd.DataFrame:
        """The (user_id, item_id) pairs the version knows, as a DataFrame."""
        rated = self.rated
        item_ids = self.item_table.ids
        return pd.DataFrame({"user_id": np.repeat(rated.user_ids.astype(object),
                                                  np.diff(rated.offsets)),
                             "item_id": item_ids[rated.rows] if len(item_ids) else []})

    def checkpoint(self) -> Checkpoint:
        """The version's vocabularies, weights and (when saved) optimizer state, validated.

        Raises:
          ExportError: missing (an export from before checkpoints) or damaged files.
        """
        path = self.file(CHECKPOINT, VOCABULARIES_FILE)
        if not os.path.exists(path):
            self.missing(path, "missing: this version cannot be continued (it was exported "
                         "before checkpoints were written); train a new model instead")
        vocabularies = read_json(path, "vocabulary file")
        if not isinstance(vocabularies, dict) or not all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v)
                for k, v in vocabularies.items()):
            raise ExportError(f"{path}: expected a JSON object of string lists")
        for key, values in vocabularies.items():
            if len(set(values)) != len(values) or "" in values:
                raise ExportError(f"{path}: vocabulary {key!r:.80} holds a repeated or empty value")
        weights = self._float_arrays(self.file(CHECKPOINT, WEIGHTS_FILE))
        optimizer_path = self.file(CHECKPOINT, OPTIMIZER_FILE)
        optimizer = self._float_arrays(optimizer_path) if os.path.exists(optimizer_path) else {}
        if any((v < 0).any() for v in optimizer.values()):
            raise ExportError(f"{optimizer_path}: accumulators must not be negative")
        return Checkpoint(vocabularies, weights, optimizer)

    # -- files ---------------------------------------------------------------------------------

    def _float_arrays(self, path: str) -> dict[str, np.ndarray]:
        arrays = self._load_npz(path, ())
        for key, value in arrays.items():
            if value.dtype.kind != "f" or not np.isfinite(value).all():
                raise ExportError(f"{path}: {key!r:.80} must hold finite floats; re-export the model")
        return arrays

    def _load_npy(self, path: str) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            self.missing(path)
        except (OSError, ValueError, EOFError, MemoryError) as exc:
            raise ExportError(f"{path}: damaged or not a numpy array file ({_short(exc)}); "
                              "re-export the model") from None

    def _load_npz(self, path: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Every array of an .npz (at least `keys`), read without pickles."""
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in keys if k not in data.files]
                if missing:
                    raise ExportError(f"{path}: damaged: missing {', '.join(missing)}; re-export "
                                      "the model")
                return {k: data[k] for k in data.files}
        except FileNotFoundError:
            self.missing(path)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError,
                MemoryError) as exc:
            raise ExportError(f"{path}: damaged or not a numpy archive ({_short(exc)}); "
                              "re-export the model") from None

    def _read_lines(self, path: str) -> list[str]:
        try:
            with open(path, encoding="utf-8", newline="\n") as f:
                text = f.read()
        except FileNotFoundError:
            self.missing(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ExportError(f"{path}: cannot be read as UTF-8 text ({_short(exc)})") from None
        if text and not text.endswith("\n"):
            raise ExportError(f"{path}: truncated (the last line has no line end); re-export the "
                              "model")
        return text.split("\n")[:-1]

    def _read_csv(self, path: str, key: str) -> pd.DataFrame:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        except FileNotFoundError:
            self.missing(path)
        except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
            raise ExportError(f"{path}: damaged or not a CSV table ({_short(exc)})") from None
        if key not in frame.columns:
            raise ExportError(f"{path}: expected a {key!r} column, found "
                              f"{', '.join(map(str, frame.columns))[:200]}")
        return frame


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _check_ids(values: list[str], path: str, what: str, sorted_unique: bool) -> None:
    """Refuses ids a version could not have written: empty, not canonical, unsafe (too long or
    with control characters) or, when `sorted_unique`, out of order or repeated."""
    for line, value in enumerate(values, start=1):
        problem = ids.id_problem(value) or ("is empty" if value == "" else None) or (
            "has surrounding white space" if ids.canonical_id(value) != value else None)
        if problem:
            raise ExportError(f"{path}: {what} {line} ({value[:40]!r}) {problem}; re-export the "
                              "model")
    if sorted_unique and any(a >= b for a, b in zip(values, values[1:])):
        raise ExportError(f"{path}: {what}s must be sorted and unique; re-export the model")


def read_consistent(root: str | os.PathLike, load: Callable[[ExportReader], T],
                    attempts: int = 3) -> T:
    """Runs ``load(ExportReader(root))`` on the current version; when that version disappears
    meanwhile (`VersionGoneError`: a writer pruned or rolled it back), runs it again on the new
    current version. `load` should read everything it needs from the reader.

    Raises:
      VersionGoneError: the version changed under every attempt. ExportError: as `load` raises.
    """
    for attempt in range(attempts):
        try:
            return load(ExportReader(root))
        except VersionGoneError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
