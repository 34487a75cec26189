"""ScaNN backend: tree partitioning + anisotropic hashing + exact reordering, dot-product scoring.

ScaNN is an optional, Linux-only extra (``pip install "tte_tfrs[scann]"``).
"""

import math
import os
import re
import tempfile

import numpy as np

from tte_tfrs.retrieval.base import Backend

try:
    from scann import scann_ops_pybind
except ImportError:  # ScaNN is optional
    scann_ops_pybind = None

ASSETS_FILE = "scann_assets.pbtxt"
INSTALL_HINT = ('ScaNN is not installed; it is an optional Linux extra: pip install "tte_tfrs[scann]" '
                '(or pip install "scann[tf]==1.4.2"). Use --backend=faiss-ivfpq meanwhile.')


def require_scann():
    if scann_ops_pybind is None:
        raise ImportError(INSTALL_HINT)


class ScannBackend(Backend):
    """ScaNN searcher built with ``builder(db, k, "dot_product").tree().score_ah().reorder()``.

    Build params: ``num_leaves``, ``training_sample_size``, ``dims_per_block``,
    ``anisotropic_quantization_threshold``, ``reorder`` (default reorder count). Search params:
    ``leaves_to_search``, ``pre_reorder_num_neighbors`` (0 means the build's reorder count).
    Catalogues smaller than ``minimum_items`` get exact search instead (see `ItemIndex.build`).
    """

    name = "scann"

    def __init__(self, build_params, search_params):
        require_scann()
        super().__init__(build_params, search_params)

    @classmethod
    def default_params(cls, count, dim):
        num_leaves = int(min(max(16, 2 * math.sqrt(max(count, 1))), max(count // 50, 1)))
        return ({"num_leaves": num_leaves, "training_sample_size": int(min(count, 250000)),
                 "dims_per_block": 2, "anisotropic_quantization_threshold": 0.2, "reorder": 1000},
                # Measured on 339,898 Book-Crossing item embeddings (BENCHMARKS.md): 10% of the
                # leaves with 1,000 reordered gives recall@10 0.987 at 101x exact's throughput.
                {"leaves_to_search": min(num_leaves, max(8, num_leaves // 10)),
                 "pre_reorder_num_neighbors": 0})

    @classmethod
    def minimum_items(cls, build_params):
        return 50 * build_params["num_leaves"]

    def _build(self, embeddings):
        p = self.build_params
        builder = scann_ops_pybind.builder(embeddings, 10, "dot_product")
        builder = builder.tree(num_leaves=p["num_leaves"], num_leaves_to_search=max(1, p["num_leaves"] // 10),
                               training_sample_size=min(p["training_sample_size"], len(embeddings)))
        builder = builder.score_ah(p["dims_per_block"],
                                   anisotropic_quantization_threshold=p["anisotropic_quantization_threshold"])
        self.searcher = builder.reorder(p["reorder"]).build()

    def search(self, queries, k):
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        leaves = int(min(self.search_params["leaves_to_search"], self.build_params["num_leaves"]))
        reorder = int(self.search_params["pre_reorder_num_neighbors"] or self.build_params["reorder"])
        rows, scores = self.searcher.search_batched(queries, final_num_neighbors=int(k),
                                                    leaves_to_search=leaves,
                                                    pre_reorder_num_neighbors=max(reorder, int(k)))
        rows = np.asarray(rows, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        if rows.shape[1] < k:           # ScaNN returns fewer columns when it finds fewer items
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return scores, rows

    def _save(self, folder):
        self.searcher.serialize(folder)
        # ScaNN records absolute asset paths; keep bare names so the export can be moved.
        path = os.path.join(folder, ASSETS_FILE)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(re.sub(r'asset_path: "[^"]*/([^"/]+)"', r'asset_path: "\1"', text))

    def _load(self, folder, embeddings):
        folder = os.path.abspath(folder)
        with open(os.path.join(folder, ASSETS_FILE), encoding="utf-8") as f:
            text = f.read()
        with tempfile.TemporaryDirectory() as view:
            # A view of the folder whose asset file names the assets where they are now.
            for name in os.listdir(folder):
                if name != ASSETS_FILE:
                    os.symlink(os.path.join(folder, name), os.path.join(view, name))
            with open(os.path.join(view, ASSETS_FILE), "w", encoding="utf-8") as f:
                f.write(re.sub(r'asset_path: "(?:[^"]*/)?([^"/]+)"',
                               lambda m: f'asset_path: "{os.path.join(view, m.group(1))}"', text))
            self.searcher = scann_ops_pybind.load_searcher(view)
