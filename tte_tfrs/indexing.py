"""Builds and saves the ANN index of an export, and records it in the manifest."""

import os

from tte_tfrs import lifecycle
from tte_tfrs.recommender import index_folder, load_item_table, read_manifest
from tte_tfrs.retrieval import DEFAULT_BACKEND, ItemIndex
from tte_tfrs.retrieval.index import IndexMismatchError


def build_index(output_dir, backend=DEFAULT_BACKEND, build_params=None, search_params=None):
    """Builds `backend` over the current export's item embeddings and saves it beside them.

    The index goes to ``OUTPUT_DIR/index/<backend>/<version>/`` (replacing an older one atomically)
    and the manifest's ``indexes`` entry records its settings.

    Returns:
      (ItemIndex, metadata dict).
    """
    version = read_manifest(output_dir)["version"]
    embeddings, ids, _ = load_item_table(output_dir, version)
    index = ItemIndex.build(embeddings, ids, backend, build_params, search_params)
    return index, _save(output_dir, index, backend, version)


def refresh_indexes(output_dir, parent_manifest):
    """Gives the current version every index the parent version had, re-encoded or rebuilt.

    For each backend saved for the parent, the parent's index is kept (its trained clusters and
    codebooks re-encode the new embeddings, added items included) when it still fits them, and
    rebuilt otherwise (`ItemIndex.refreshed`); the manifest records which, as ``refresh``.

    Returns:
      {backend: metadata dict} of the indexes written.
    """
    parent_version = parent_manifest["version"]
    version = read_manifest(output_dir)["version"]
    old_embeddings, old_ids, _ = load_item_table(output_dir, parent_version)
    embeddings, ids, _ = load_item_table(output_dir, version)
    written = {}
    for backend in sorted(parent_manifest.get("indexes", {})):
        try:
            old = ItemIndex.load(index_folder(output_dir, backend, parent_version), old_embeddings,
                                 old_ids, parent_version)
        except (FileNotFoundError, IndexMismatchError) as exc:
            index = ItemIndex.build(embeddings, ids, backend)
            how = f"rebuilt: the parent's index could not be used ({exc})"
        else:
            index, how = old.refreshed(embeddings, ids, backend)
        written[backend] = _save(output_dir, index, backend, version, refresh=how)
    return written


def _save(output_dir, index, backend, version, **extra):
    with lifecycle.writer_lock(output_dir):
        if read_manifest(output_dir)["version"] != version:
            raise lifecycle.LifecycleError(f"{output_dir} changed version while the index was "
                                           "built; run tte-index again")
        meta = index.save(index_folder(output_dir, backend, version), version)
        meta["path"] = os.path.relpath(index_folder(output_dir, backend, version), output_dir)
        meta.update(extra)
        manifest = read_manifest(output_dir)
        manifest.setdefault("indexes", {})[backend] = meta
        lifecycle.write_manifest(output_dir, manifest)
    return meta
