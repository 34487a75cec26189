"""Builds and saves the ANN index of an export version, and records it in the manifest.

May import: tte_tfrs.exports (reader and lifecycle), the rest of tte_tfrs.retrieval.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tte_tfrs.errors import ExportError
from tte_tfrs.exports import lifecycle
from tte_tfrs.exports.reader import ExportReader, read_consistent
from tte_tfrs.retrieval.item_index import IndexMismatchError, ItemIndex
from tte_tfrs.retrieval.registry import DEFAULT_BACKEND


def build_index(output_dir: str, backend: str = DEFAULT_BACKEND,
                build_params: Mapping[str, Any] | None = None,
                search_params: Mapping[str, Any] | None = None) -> tuple[ItemIndex, dict]:
    """Builds `backend` over the current export's item embeddings and saves it beside them.

    The index goes to ``OUTPUT_DIR/index/<backend>/<version>/`` (replacing an older one atomically)
    and the manifest's ``indexes`` entry records its settings.

    Returns:
      (ItemIndex, metadata dict).

    Raises:
      ExportError: no export, or a damaged one. ConfigError: unknown backend or setting.
    """
    reader, table = read_consistent(output_dir, lambda reader: (reader, reader.item_table))
    index = ItemIndex.build(table.embeddings, table.ids, backend, build_params, search_params)
    return index, _save(reader, index, backend)


def refresh_indexes(output_dir: str, parent_version: int) -> dict[str, dict]:
    """Gives the current version every index the parent version had, re-encoded or rebuilt.

    For each backend saved for the parent, the parent's index is kept (its trained clusters and
    codebooks re-encode the new embeddings, added items included) when it still fits them, and
    rebuilt otherwise (`ItemIndex.refreshed`); the manifest records which, as ``refresh``.

    Returns:
      {backend: metadata dict} of the indexes written.
    """
    parent = ExportReader(output_dir, parent_version)
    reader = ExportReader(output_dir)
    old, new = parent.item_table, reader.item_table
    written = {}
    for backend in sorted(parent.manifest.get("indexes", {})):
        try:
            old_index = ItemIndex.load(parent.index_folder(backend), old.embeddings, old.ids,
                                       parent.version)
        except (FileNotFoundError, IndexMismatchError, ExportError) as exc:
            index = ItemIndex.build(new.embeddings, new.ids, backend)
            how = f"rebuilt: the parent's index could not be used ({exc})"
        else:
            index, how = old_index.refreshed(new.embeddings, new.ids, backend)
        written[backend] = _save(reader, index, backend, refresh=how)
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
        meta = index.save(folder, version)
        meta["path"] = os.path.relpath(folder, root)
        meta.update(extra)
        manifest.setdefault("indexes", {})[backend] = meta
        lifecycle.write_manifest(root, manifest)
    return meta
