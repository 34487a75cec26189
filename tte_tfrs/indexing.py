"""Builds and saves the ANN index of an export, and records it in the manifest."""

import json
import os

from tte_tfrs.export import MANIFEST, _write_atomically
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
    meta = index.save(index_folder(output_dir, backend, version), version)
    meta["path"] = os.path.relpath(index_folder(output_dir, backend, version), output_dir)
    manifest = read_manifest(output_dir)             # re-read: keep concurrent edits minimal
    manifest.setdefault("indexes", {})[backend] = meta
    _write_atomically(os.path.join(output_dir, MANIFEST), json.dumps(manifest, indent=2))
    return index, meta
