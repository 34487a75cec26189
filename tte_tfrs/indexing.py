"""Builds and saves the ANN index of an export, and records it in the manifest."""

import os

from tte_tfrs import lifecycle
from tte_tfrs.recommender import index_folder, load_item_table, read_manifest
from tte_tfrs.retrieval import DEFAULT_BACKEND, ItemIndex


def build_index(output_dir, backend=DEFAULT_BACKEND, build_params=None, search_params=None):
    """Builds `backend` over the current export's item embeddings and saves it beside them.

    The index goes to ``OUTPUT_DIR/index/<backend>/<version>/`` (replacing an older one atomically)
    and the manifest's ``indexes`` entry records its settings.

    Returns:
      (ItemIndex, metadata dict).
    """
    manifest = read_manifest(output_dir)
    version = manifest["version"]
    embeddings, ids, _ = load_item_table(output_dir, version)
    index = ItemIndex.build(embeddings, ids, backend, build_params, search_params)
    with lifecycle.writer_lock(output_dir):
        if read_manifest(output_dir)["version"] != version:
            raise lifecycle.LifecycleError(f"{output_dir} changed version while the index was "
                                           "built; run tte-index again")
        meta = index.save(index_folder(output_dir, backend, version), version)
        meta["path"] = os.path.relpath(index_folder(output_dir, backend, version), output_dir)
        manifest = read_manifest(output_dir)
        manifest.setdefault("indexes", {})[backend] = meta
        lifecycle.write_manifest(output_dir, manifest)
    return index, meta
