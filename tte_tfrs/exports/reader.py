"""The one reader of export folders: every consumer (recommending, indexing, evaluating, updating)
opens a version through `ExportReader`, which validates what it reads.

A reader is pinned to one version when it is opened (the current one unless asked otherwise), so a
new export or a rollback while it reads never mixes two versions. Nothing read from the folder is
trusted: versions must be positive whole numbers, every path is built from the layout's names and
checked to stay inside the export root, and a missing or damaged file raises an `ExportError`
naming the file and what was expected.

May import: tte_tfrs.errors, tte_tfrs.exports.layout (numpy, pandas; no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import zipfile
from typing import Any

import numpy as np
import pandas as pd

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
    RATED_FILE,
    USERS,
    USERS_FILE,
)

# Keys every manifest has; a manifest without them was not written by `tte_tfrs.export`.
MANIFEST_KEYS = ("version", "embedding_dim", "signatures", "dataset", "config")
_BACKEND_NAME = re.compile(r"[a-z][a-z0-9-]{0,40}")


def read_json(path: str, what: str) -> Any:
    """Parses a JSON file, raising ExportError naming it when it is missing or not valid JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ExportError(f"{path}: missing ({what})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ExportError(f"{path}: not a valid {what} ({exc})") from None


def check_version(value: Any, where: str) -> int:
    """`value` as a version number: a positive whole number (never a path or a string).

    Raises:
      ExportError: anything else, naming `where`.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExportError(f"{where}: version must be a positive whole number, got {value!r}")
    return value


def validate_manifest(manifest: Any, path: str) -> dict:
    """Checks the keys every consumer relies on; returns the manifest.

    Raises:
      ExportError: not a JSON object, a key missing, or a version that is not a positive integer.
    """
    if not isinstance(manifest, dict):
        raise ExportError(f"{path}: expected a JSON object (an export manifest)")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ExportError(f"{path}: not an export manifest: missing {', '.join(missing)}")
    check_version(manifest["version"], path)
    written_format = manifest.get("format_version", 1)
    if not isinstance(written_format, int) or written_format > FORMAT_VERSION:
        raise ExportError(f"{path}: export format {written_format!r} was written by a newer "
                          f"tte_tfrs (this one reads up to format {FORMAT_VERSION}); upgrade tte_tfrs")
    for key in ("signatures", "dataset", "config"):
        if not isinstance(manifest[key], dict):
            raise ExportError(f"{path}: {key!r} must be a JSON object")
    for model in ("user_tower", "item_tower"):
        inputs = manifest["signatures"].get(model, {}).get("inputs")
        if not isinstance(inputs, dict) or not inputs:
            raise ExportError(f"{path}: signatures.{model}.inputs is missing")
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
    if not os.path.exists(os.path.join(root, MANIFEST)):
        return None
    return read_manifest(root)["version"]


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
            return self.items["title"].astype(str).to_numpy()
        return np.full(len(self.ids), "", dtype=object)


@dataclasses.dataclass(frozen=True)
class RatedItems:
    """Who interacted with what, compressed: user ``user_ids[u]`` interacted with catalogue rows
    ``rows[offsets[u]:offsets[u + 1]]``.

    Attributes:
      user_ids: sorted user ids (str array).
      offsets: int64 [users + 1], non-decreasing, from 0 to len(rows).
      rows: int64 catalogue rows.
    """

    user_ids: np.ndarray
    offsets: np.ndarray
    rows: np.ndarray

    @functools.cached_property
    def _position(self) -> dict[str, int]:
        return {str(u): n for n, u in enumerate(self.user_ids)}

    def of(self, user_id: str) -> np.ndarray:
        """Catalogue rows of `user_id` (empty for users without interactions)."""
        position = self._position.get(user_id)
        if position is None:
            return np.zeros(0, np.int64)
        return self.rows[self.offsets[position]:self.offsets[position + 1]]


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
        self.manifest = read_manifest(self.root, version)
        self.version: int = self.manifest["version"]

    def __repr__(self) -> str:
        return f"ExportReader({self.root!r}, version={self.version})"

    def path(self, *parts: str) -> str:
        """``root/parts...``, refusing any path that would leave the export root.

        Raises:
          ExportError: the path escapes the root (e.g. through ``..`` or a link).
        """
        path = os.path.join(self.root, *parts)
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise ExportError(f"{path}: points outside the export folder {self.root}; refusing to "
                              "read it")
        return path

    def folder(self, part: str) -> str:
        """The version's folder of a versioned part (``user_tower``, ``users``, ...)."""
        return self.path(part, str(self.version))

    def saved_model(self, name: str) -> str:
        """Path of one of the version's SavedModels, checked to exist.

        Raises:
          ExportError: the folder is missing or holds no SavedModel.
        """
        folder = self.folder(name)
        if not os.path.exists(os.path.join(folder, "saved_model.pb")):
            raise ExportError(f"{folder}: missing or not a SavedModel (no saved_model.pb)")
        return folder

    def index_folder(self, backend: str) -> str:
        """Where the version's `backend` index is (or would be) saved.

        Raises:
          ExportError: `backend` is not a plain backend name.
        """
        if not isinstance(backend, str) or not _BACKEND_NAME.fullmatch(backend):
            raise ExportError(f"{backend!r} is not a backend name")
        return self.path(INDEX_ROOT, backend, str(self.version))

    def checkpoint_folder(self) -> str:
        return self.folder(CHECKPOINT)

    def user_inputs(self) -> dict[str, dict]:
        """The user tower's inputs by name: ``{"dtype": ..., "kind": ..., ...}``."""
        return self.manifest["signatures"]["user_tower"]["inputs"]

    @functools.cached_property
    def item_table(self) -> ItemTable:
        """The catalogue: embeddings, ids and features, checked to agree.

        Raises:
          ExportError: a file is missing or damaged, or the three disagree in length or width.
        """
        folder = self.folder(EMBEDDINGS)
        embeddings = _load_npy(os.path.join(folder, EMBEDDINGS_FILE))
        dim = self.manifest["embedding_dim"]
        if embeddings.ndim != 2 or embeddings.shape[1] != dim or embeddings.dtype != np.float32:
            raise ExportError(f"{os.path.join(folder, EMBEDDINGS_FILE)}: expected float32 "
                              f"[items, {dim}], found {embeddings.dtype} {list(embeddings.shape)}")
        if not np.isfinite(embeddings).all():
            raise ExportError(f"{os.path.join(folder, EMBEDDINGS_FILE)}: holds NaN or infinite "
                              "values; re-export the model")
        ids = _read_lines(os.path.join(folder, ITEM_IDS_FILE))
        items = _read_csv(os.path.join(folder, ITEMS_FILE), "item_id")
        if not len(ids) == len(items) == len(embeddings):
            raise ExportError(f"{folder}: {len(embeddings)} embeddings, {len(ids)} ids in "
                              f"{ITEM_IDS_FILE} and {len(items)} rows in {ITEMS_FILE}; they must "
                              "agree (re-export the model)")
        return ItemTable(embeddings, np.asarray(ids, dtype=object), items)

    @functools.cached_property
    def users(self) -> pd.DataFrame:
        """Known users' features as strings, indexed by ``user_id`` (the column is kept)."""
        users = _read_csv(os.path.join(self.folder(USERS), USERS_FILE), "user_id")
        return users.set_index("user_id", drop=False)

    @functools.cached_property
    def rated(self) -> RatedItems:
        """Who interacted with which catalogue rows, checked against the catalogue size.

        Raises:
          ExportError: the file is missing, damaged or inconsistent.
        """
        path = os.path.join(self.folder(USERS), RATED_FILE)
        arrays = _load_npz(path, ("user_ids", "offsets", "rows"))
        user_ids, offsets, rows = arrays["user_ids"], arrays["offsets"], arrays["rows"]
        count = self.manifest.get("item_embeddings", {}).get("count")
        problems = []
        if user_ids.ndim != 1 or offsets.ndim != 1 or rows.ndim != 1:
            problems.append("arrays must be one-dimensional")
        elif len(offsets) != len(user_ids) + 1:
            problems.append(f"{len(offsets)} offsets for {len(user_ids)} users (expected one more)")
        elif len(offsets) and (offsets[0] != 0 or offsets[-1] != len(rows)
                               or np.any(np.diff(offsets) < 0)):
            problems.append("offsets must rise from 0 to the number of rows")
        elif not np.issubdtype(rows.dtype, np.integer) or (
                len(rows) and (rows.min() < 0 or (count is not None and rows.max() >= count))):
            problems.append("rows must be catalogue rows")
        if problems:
            raise ExportError(f"{path}: damaged: {problems[0]}; re-export the model")
        return RatedItems(user_ids.astype(str), offsets.astype(np.int64), rows.astype(np.int64))

    def interactions(self) -> pd.DataFrame:
        """The (user_id, item_id) pairs the version knows, as a DataFrame."""
        rated = self.rated
        ids = self.item_table.ids
        return pd.DataFrame({"user_id": np.repeat(rated.user_ids, np.diff(rated.offsets)),
                             "item_id": ids[rated.rows].astype(str) if len(ids) else []})


def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ExportError(f"{path}: missing") from None
    except (OSError, ValueError, EOFError) as exc:
        raise ExportError(f"{path}: damaged or not a numpy array file ({exc}); re-export the "
                          "model") from None


def _load_npz(path: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise ExportError(f"{path}: damaged: missing {', '.join(missing)}")
            return {k: data[k] for k in keys}
    except FileNotFoundError:
        raise ExportError(f"{path}: missing") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ExportError(f"{path}: damaged or not a numpy archive ({exc}); re-export the "
                          "model") from None


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", newline="\n") as f:
            return f.read().split("\n")[:-1]
    except FileNotFoundError:
        raise ExportError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: cannot be read as UTF-8 text ({exc})") from None


def _read_csv(path: str, key: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        raise ExportError(f"{path}: damaged or not a CSV table ({exc})") from None
    if key not in frame.columns:
        raise ExportError(f"{path}: expected a {key!r} column, found {', '.join(frame.columns)}")
    return frame
