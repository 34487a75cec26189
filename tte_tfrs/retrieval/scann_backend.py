"""ScaNN backend: tree partitioning + anisotropic hashing + exact reordering, dot-product scoring.

ScaNN is an optional, Linux-only extra (``pip install "tte_tfrs[scann]"``).
"""

import math
import os
import re
import tempfile

import numpy as np

from tte_tfrs.errors import ConfigError, ExportError
from tte_tfrs.retrieval.base import Backend, Setting, effort_rungs

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
    BUILD = {"num_leaves": Setting(1, 1 << 20, help="tree leaves"),
             "training_sample_size": Setting(1, 1 << 31, help="items the tree is trained on"),
             "dims_per_block": Setting(1, 8, help="dimensions per anisotropic-hashing block"),
             "anisotropic_quantization_threshold": Setting(0.0, 1.0, float,
                                                           help="ScaNN's eta threshold"),
             "reorder": Setting(1, 1 << 20, help="default candidates re-scored inside ScaNN")}
    SEARCH = {"leaves_to_search": Setting(1, 1 << 20, help="leaves searched per query"),
              "pre_reorder_num_neighbors": Setting(0, 1 << 20, help="candidates re-scored inside "
                                                   "ScaNN (0: the build's reorder)")}

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

    @classmethod
    def check_build(cls, build_params, count, dim):
        if build_params["dims_per_block"] > dim:
            raise ConfigError(f"dims_per_block must be at most the dimension {dim}, got "
                              f"{build_params['dims_per_block']}", field="dims_per_block")
        if build_params["training_sample_size"] < build_params["num_leaves"]:
            raise ConfigError(f"training_sample_size ({build_params['training_sample_size']}) must "
                              f"be at least num_leaves ({build_params['num_leaves']})",
                              field="training_sample_size")

    def _build(self, embeddings):
        p = self.build_params
        builder = scann_ops_pybind.builder(embeddings, 10, "dot_product")
        builder = builder.tree(num_leaves=p["num_leaves"], num_leaves_to_search=max(1, p["num_leaves"] // 10),
                               training_sample_size=min(p["training_sample_size"], len(embeddings)))
        builder = builder.score_ah(p["dims_per_block"],
                                   anisotropic_quantization_threshold=p["anisotropic_quantization_threshold"])
        self.searcher = builder.reorder(p["reorder"]).build()

    def calibration_ladders(self, k):
        # ScaNN re-scores its `pre_reorder_num_neighbors` best hashed candidates exactly, so a few
        # candidates beyond k are enough for our re-ranking; the depth of its reordering is tuned.
        rerank = 2
        leaves = effort_rungs(self.build_params["num_leaves"])
        return [[({"leaves_to_search": n, "pre_reorder_num_neighbors": depth}, rerank)
                 for n in leaves] for depth in (100, 250, 1000)]

    def search(self, queries, k):
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        leaves = int(min(self.search_params["leaves_to_search"], self.build_params["num_leaves"]))
        reorder = int(self.search_params["pre_reorder_num_neighbors"] or self.build_params["reorder"])
        settings = dict(final_num_neighbors=int(k), leaves_to_search=leaves,
                        pre_reorder_num_neighbors=max(reorder, int(k)))
        if len(queries) == 1:            # the single-query call skips the batching overhead
            rows, scores = self.searcher.search(queries[0], **settings)
            rows, scores = rows[None, :], scores[None, :]
        else:
            rows, scores = self.searcher.search_batched(queries, **settings)
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
        assets = os.path.join(folder, ASSETS_FILE)
        try:
            with open(assets, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise ExportError(f"{assets}: missing; rebuild the index with tte-index") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ExportError(f"{assets}: damaged ({exc}); rebuild the index with tte-index") from None
        present = set(os.listdir(folder)) - {ASSETS_FILE}
        named = re.findall(r'asset_path: "(?:[^"]*/)?([^"/]*)"', text)
        strangers = sorted(set(named) - present)
        if not named or strangers:
            what = f"names files that are not there: {', '.join(strangers)}" if named else \
                "names no assets"
            raise ExportError(f"{assets}: {what}; rebuild the index with tte-index")
        with tempfile.TemporaryDirectory() as view:
            # A view of the folder whose asset file names the assets where they are now.
            for name in present:
                os.symlink(os.path.join(folder, name), os.path.join(view, name))
            with open(os.path.join(view, ASSETS_FILE), "w", encoding="utf-8") as f:
                f.write(re.sub(r'asset_path: "(?:[^"]*/)?([^"/]*)"',
                               lambda m: f'asset_path: "{os.path.join(view, m.group(1))}"', text))
            try:
                self.searcher = scann_ops_pybind.load_searcher(view)
            except RuntimeError as exc:
                message = str(exc).replace(view, folder).strip().splitlines()
                raise ExportError(f"{folder}: damaged ScaNN index ({message[-1] if message else exc}); "
                                  "rebuild it with tte-index") from None
