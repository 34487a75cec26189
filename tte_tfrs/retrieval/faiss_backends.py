"""FAISS backends: IVF-PQ (the default) and HNSW, for unnormalised maximum inner product search.

IVF and PQ are built for L2; with unnormalised vectors, inner-product clustering puts long vectors
everywhere and short ones nowhere (measured: an inner-product coarse quantizer gave recall@10 0.08 at
nprobe 256 of 894 on tower-like embeddings). IVF-PQ therefore uses the standard reduction of maximum
inner product search to nearest neighbour search (Bachrach et al., 2014; the FAISS wiki's "MIPS to L2"):
every item x becomes [x, sqrt(R^2 - |x|^2)] with R the largest item norm, every query q becomes [q, 0],
and then |q' - x'|^2 = |q|^2 + R^2 - 2<q, x>, so the nearest item is the one with the largest inner
product. The index returns candidates; `ItemIndex` re-scores them exactly.
"""

import math
import os

import numpy as np

from tte_tfrs.errors import ConfigError, ExportError
from tte_tfrs.retrieval.base import Backend, Setting, effort_rungs

try:
    import faiss
except ImportError:  # pragma: no cover - faiss-cpu is a hard dependency
    faiss = None

INDEX_FILE = "index.faiss"
# IVF-PQ codebooks that encode updated embeddings this much worse than at build time are retrained.
STALE_ERROR_RATIO = 1.25
# Coarse k-means trains on at most this many items per cell (FAISS asks for at least 39; its default
# of 256 makes a 10M-item build spend most of its time clustering a 3M-item sample).
TRAIN_POINTS_PER_CELL = 64


def augment_items(embeddings, max_norm):
    norms = np.einsum("ij,ij->i", embeddings, embeddings)
    extra = np.sqrt(np.maximum(max_norm ** 2 - norms, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([embeddings, extra[:, None]]), dtype=np.float32)


def augment_queries(queries):
    zeros = np.zeros((len(queries), 1), np.float32)
    return np.ascontiguousarray(np.hstack([queries.astype(np.float32), zeros]))


def _pad(vectors, dim):
    if vectors.shape[1] == dim:
        return vectors
    padded = np.zeros((len(vectors), dim), np.float32)
    padded[:, : vectors.shape[1]] = vectors
    return padded


class _FaissIndexFile(Backend):
    """Saves and loads ``self.index`` as one FAISS index file."""

    def _save(self, folder):
        faiss.write_index(self.index, os.path.join(folder, INDEX_FILE))

    def _load(self, folder, embeddings):
        path = os.path.join(folder, INDEX_FILE)
        if not os.path.exists(path):
            raise ExportError(f"{path}: missing; rebuild the index with tte-index")
        try:
            self.index = faiss.read_index(path)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
            raise ExportError(f"{path}: damaged or not a FAISS index ({reason}); rebuild it with "
                              "tte-index") from None
        expected = self._index_dim(embeddings.shape[1])
        if self.index.d != expected or self.index.ntotal != len(embeddings):
            raise ExportError(f"{path}: holds {self.index.ntotal} vectors of dimension "
                              f"{self.index.d}, expected {len(embeddings)} of dimension {expected}; "
                              "rebuild it with tte-index")

    def _index_dim(self, dim):
        return dim


class _MipsToL2Backend(_FaissIndexFile):
    """MIPS-to-L2 plumbing: the transform, padding and score conversion."""

    def _prepare_items(self, embeddings):
        if not self.build_params.get("max_norm"):
            self.build_params["max_norm"] = float(np.linalg.norm(embeddings, axis=1).max())
        items = augment_items(embeddings, self.build_params["max_norm"])
        return _pad(items, self._index_dim(embeddings.shape[1]))

    def _index_dim(self, dim):
        return dim + 1

    def search(self, queries, k):
        self._apply_search_params()
        prepared = _pad(augment_queries(np.asarray(queries, np.float32)), self.index.d)
        distances, rows = self.index.search(prepared, int(k))
        # Convert L2 distances of the augmented vectors back to inner products.
        query_norms = np.einsum("ij,ij->i", prepared, prepared)[:, None]
        scores = (query_norms + self.build_params["max_norm"] ** 2 - distances) / 2.0
        scores[rows < 0] = -np.inf
        return scores.astype(np.float32), rows.astype(np.int64)


class IvfPqBackend(_MipsToL2Backend):
    """faiss.IndexIVFPQ over MIPS-augmented vectors.

    Build params: ``nlist`` (coarse cells), ``m`` (sub-quantizers; the augmented vector is
    zero-padded to a multiple of m), ``nbits`` (bits per sub-quantizer code), ``seed``.
    Search params: ``nprobe`` (cells visited).
    """

    name = "faiss-ivfpq"
    BUILD = {"nlist": Setting(1, 1 << 20, help="coarse cells"),
             "m": Setting(1, 1024, help="PQ sub-quantizers"),
             "nbits": Setting(1, 16, help="bits per sub-quantizer code"),
             "seed": Setting(0, 2 ** 31 - 1, help="k-means seed"),
             "max_norm": Setting(0.0, None, float, help="R of the MIPS transform (0: measured)")}
    SEARCH = {"nprobe": Setting(1, 1 << 20, help="cells searched per query")}

    @classmethod
    def default_params(cls, count, dim):
        # About 4 sqrt(n) cells, but at least 39 training points per cell as FAISS asks.
        nlist = int(min(max(16, 4 * math.sqrt(max(count, 1))), max(count // 39, 1), 65536))
        m = math.ceil((dim + 1) / 2)        # two dimensions per sub-quantizer: accurate codes
        # A starting point only: build_index calibrates nprobe on the catalogue's own queries.
        nprobe = min(nlist, max(16, nlist // 32))
        return ({"nlist": nlist, "m": m, "nbits": 8, "seed": 1234, "max_norm": 0.0},
                {"nprobe": nprobe})

    @classmethod
    def minimum_items(cls, build_params):
        # FAISS asks for 39 training points per centroid, coarse and PQ alike.
        return 39 * max(build_params["nlist"], 2 ** build_params["nbits"])

    @classmethod
    def check_build(cls, build_params, count, dim):
        if build_params["m"] > dim + 1:
            raise ConfigError(f"m must be at most the augmented dimension {dim + 1} (one dimension "
                              f"per sub-quantizer), got {build_params['m']}", field="m")

    def _index_dim(self, dim):
        m = self.build_params["m"]
        return int(math.ceil((dim + 1) / m) * m)

    def _build(self, embeddings):
        items = self._prepare_items(embeddings)
        p = self.build_params
        quantizer = faiss.IndexFlatL2(items.shape[1])
        index = faiss.IndexIVFPQ(quantizer, items.shape[1], p["nlist"], p["m"], p["nbits"])
        index.cp.seed = p["seed"]
        index.cp.max_points_per_centroid = TRAIN_POINTS_PER_CELL
        index.pq.cp.seed = p["seed"]
        index.train(items)
        index.add(items)
        assert index.metric_type == faiss.METRIC_L2
        self.index = index

    def _load(self, folder, embeddings):
        super()._load(folder, embeddings)
        if not isinstance(self.index, faiss.IndexIVFPQ):
            raise ExportError(f"{os.path.join(folder, INDEX_FILE)}: a {type(self.index).__name__}, "
                              "not an IVF-PQ index; rebuild it with tte-index")

    def reencoded(self, embeddings, previous_embeddings, ids=None):
        """Keeps the coarse clusters and PQ codebooks while they encode the new vectors about as
        well as the old ones (squared reconstruction error at most `STALE_ERROR_RATIO` times the
        old), no item is longer than the MIPS transform's R (within 1%; a longer item is encoded
        as if it had length R), and the catalogue has not outgrown
        the number of cells chosen for it."""
        count = len(embeddings)
        if count > 2 * self.index.ntotal:
            return None, (f"the catalogue grew from {self.index.ntotal:,} to {count:,} items, more "
                          "than twice what the cells were chosen for; rebuilt")
        longest = float(np.linalg.norm(embeddings, axis=1).max())
        if longest > self.build_params["max_norm"] * 1.01:       # 1%: rounding, tiny growth
            return None, (f"an item embedding is longer ({longest:.4g}) than the transform's R "
                          f"({self.build_params['max_norm']:.4g}); rebuilt")
        old_error = self._reconstruction_error(previous_embeddings)
        new_error = self._reconstruction_error(embeddings)
        ratio = new_error / max(old_error, 1e-12)
        if ratio > STALE_ERROR_RATIO:
            return None, (f"the codebooks encode the new embeddings {ratio:.2f}x worse than the "
                          f"old ones (limit {STALE_ERROR_RATIO}x): codes are stale; rebuilt")
        backend = type(self)(self.build_params, self.search_params)
        backend.index = faiss.clone_index(self.index)
        backend.index.reset()
        backend.index.add(self._prepare_items(embeddings))
        return backend, (f"kept the trained clusters and codebooks (reconstruction error "
                         f"{ratio:.2f}x the old, limit {STALE_ERROR_RATIO}x); re-encoded "
                         f"{count:,} items")

    def _reconstruction_error(self, embeddings):
        items = self._prepare_items(embeddings)
        restored = self.index.sa_decode(self.index.sa_encode(items))
        return float(np.mean(np.sum((items - restored) ** 2, axis=1)))

    def calibration_ladders(self, k):
        # PQ scores are approximate, so the number of candidates re-ranked exactly matters too.
        rungs = effort_rungs(self.build_params["nlist"])
        return [[({"nprobe": nprobe}, rerank) for nprobe in rungs] for rerank in (3, 10, 30)]

    def _apply_search_params(self):
        self.index.nprobe = int(min(self.search_params["nprobe"], self.build_params["nlist"]))


class HnswBackend(_FaissIndexFile):
    """faiss.IndexHNSWFlat searched by inner product directly (no MIPS-to-L2 transform).

    Graph search degrades badly through the transform: the augmented items lie on one sphere and
    every query sits far inside it (measured on tower-like embeddings: recall@10 0.15 through the
    transform, 0.998 by inner product at the same M=32, efSearch=128).
    Build params: ``m`` (graph degree), ``ef_construction``. Search params: ``ef_search``.
    """

    name = "faiss-hnsw"
    # M = 1 crashes FAISS (segmentation fault); very large M only wastes memory.
    BUILD = {"m": Setting(2, 512, help="graph degree"),
             "ef_construction": Setting(1, 1 << 16, help="build beam width")}
    SEARCH = {"ef_search": Setting(1, 1 << 16, help="search beam width")}

    @classmethod
    def default_params(cls, count, dim):
        # Graph search by inner product can leave some long items unreachable: with M = 32 and
        # ef_construction = 100 recall@10 stopped at 0.943 on a 30k-book catalogue whatever the
        # search beam; M = 48, ef_construction = 200 reached 0.988-0.999 on it and on two
        # tower-shaped catalogues (BENCHMARKS.md), for about twice the build time.
        return {"m": 48, "ef_construction": 200}, {"ef_search": 128}

    def _build(self, embeddings):
        index = faiss.IndexHNSWFlat(embeddings.shape[1], self.build_params["m"],
                                    faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.build_params["ef_construction"]
        index.add(embeddings)
        assert index.metric_type == faiss.METRIC_INNER_PRODUCT
        self.index = index

    def _load(self, folder, embeddings):
        super()._load(folder, embeddings)
        if not isinstance(self.index, faiss.IndexHNSWFlat):
            raise ExportError(f"{os.path.join(folder, INDEX_FILE)}: a {type(self.index).__name__}, "
                              "not an HNSW index; rebuild it with tte-index")

    def calibration_ladders(self, k):
        # Graph search returns exact inner products: a few candidates beyond k are enough.
        rerank = 2
        return [[({"ef_search": ef}, rerank) for ef in effort_rungs(4096, least=rerank * max(k, 10))]]

    def search(self, queries, k):
        self.index.hnsw.efSearch = int(max(self.search_params["ef_search"], k))
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))
        scores[rows < 0] = -np.inf
        return scores.astype(np.float32), rows.astype(np.int64)
