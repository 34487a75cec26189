"""Milvus backend: item embeddings in a vector database, through pymilvus.

By default the database is Milvus Lite (``pip install "tte_tfrs[milvus]"``: pymilvus and milvus-lite),
an embedded engine that keeps its data in a folder and runs in-process; it is saved inside the index
folder (``index/milvus/<version>/milvus.db/``), and every reader opens its own copy, so the saved
files never change and several processes can serve one export. Given ``uri`` (``--milvus_uri``,
e.g. ``http://milvus.internal:19530``), the same code talks to a Milvus server or cluster; the index
folder then records only the address and the collection name (a token, if the server needs one, is
read from the ``MILVUS_TOKEN`` environment variable and never saved).

Items are stored by item id (the primary key), so a warm-start update upserts the items whose
embedding changed or that are new and deletes the removed ones (`reencoded`) instead of rebuilding.
On a server that update happens in place: the parent version's index then refuses to load (its
check of sample vectors fails) and needs ``tte-index`` after a rollback. Milvus Lite keeps one copy
per version, so rollbacks keep working.

Metric: inner product. HNSW (the default) and FLAT search the raw vectors. IVF types cluster with
an inner-product quantizer, which fails on unnormalised vectors (see `faiss_backends`), so they store
the MIPS-augmented vectors ``[x, sqrt(R^2 - |x|^2)]`` (all of length R) and search with ``[q, 0]``:
the inner product, and so the scores, are unchanged. Milvus Lite supports HNSW, HNSW_SQ, IVF_FLAT,
IVF_SQ8 and FLAT; IVF_PQ needs a server.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
import weakref
from typing import Any

import numpy as np

from tte_tfrs.errors import ConfigError, ExportError
from tte_tfrs.retrieval.base import Backend, Setting, effort_rungs

try:
    from pymilvus import DataType, MilvusClient
    from pymilvus.exceptions import MilvusException
except ImportError:  # pymilvus is optional
    DataType = MilvusClient = None
    MilvusException = RuntimeError

INSTALL_HINT = ('pymilvus is not installed; the milvus backend is an optional extra: pip install '
                '"tte_tfrs[milvus]" (pymilvus with the embedded Milvus Lite). Use '
                '--backend=faiss-ivfpq meanwhile.')
LITE_FOLDER = "milvus.db"
LOCATION_FILE = "milvus.json"
PRIMARY_KEY, VECTOR = "item_id", "embedding"
INDEX_TYPES = ("HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "FLAT")
URI_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")
INSERT_BATCH = 10_000
MAX_LIMIT = 16_384               # Milvus's largest top-k
CHECKED_VECTORS = 64             # sample vectors compared with the export's on load
INDEX_TIMEOUT_S = 6 * 3600      # longest wait for Milvus to index a collection


def require_pymilvus() -> None:
    if MilvusClient is None:
        raise ConfigError(INSTALL_HINT, field="backend")


def _release_lite(folder: str | None, client: Any) -> None:
    """Closes a client and stops the embedded server of `folder`, then removes the folder."""
    if client is not None:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
    if folder is not None:
        try:
            from milvus_lite.server_manager import server_manager_instance
            server_manager_instance.release_server(os.path.join(folder, LITE_FOLDER))
        except ImportError:
            pass
        shutil.rmtree(folder, ignore_errors=True)


class MilvusBackend(Backend):
    """A Milvus collection of (item id, embedding), searched by inner product.

    Build params: ``index_type`` (HNSW, HNSW_SQ, IVF_FLAT, IVF_SQ8, IVF_PQ, FLAT), ``m`` and
    ``ef_construction`` (HNSW), ``nlist`` and ``pq_m`` (IVF), ``uri`` (empty: Milvus Lite in the
    index folder), ``max_norm`` (R of the MIPS transform of IVF types; 0: measured).
    Search params: ``ef`` (HNSW), ``nprobe`` (IVF).
    """

    name = "milvus"
    BUILD = {"index_type": Setting(kind=str, choices=INDEX_TYPES, help="Milvus index type"),
             "m": Setting(2, 2048, help="HNSW graph degree"),
             "ef_construction": Setting(1, 1 << 16, help="HNSW build beam width"),
             "nlist": Setting(1, 65536, help="IVF cells"),
             "pq_m": Setting(1, 1024, help="IVF_PQ sub-quantizers"),
             "uri": Setting(kind=str, prefixes=URI_SCHEMES,
                            help="Milvus server address (empty: Milvus Lite)"),
             "max_norm": Setting(0.0, None, float, help="R of the MIPS transform (0: measured)")}
    SEARCH = {"ef": Setting(1, 32768, help="HNSW search beam width"),
              "nprobe": Setting(1, 65536, help="IVF cells searched")}

    def __init__(self, build_params, search_params):
        require_pymilvus()
        super().__init__(build_params, search_params)
        self.collection: str | None = None
        self.client: Any = None
        self._lite: str | None = None            # a private folder holding Lite's data
        self._row_of: dict[str, int] = {}
        self._finalizer = None

    @classmethod
    def default_params(cls, count, dim):
        nlist = int(min(max(16, 4 * np.sqrt(max(count, 1))), max(count // 39, 1), 65536))
        # HNSW settings as faiss-hnsw's (see there why M = 48, ef_construction = 200).
        return ({"index_type": "HNSW", "m": 48, "ef_construction": 200, "nlist": nlist,
                 "pq_m": int(np.ceil((dim + 1) / 2)), "uri": "", "max_norm": 0.0},
                {"ef": 128, "nprobe": min(nlist, 32)})

    @classmethod
    def check_build(cls, build_params, count, dim):
        if build_params["index_type"].startswith("IVF") and build_params["nlist"] > max(count, 1):
            raise ConfigError(f"nlist ({build_params['nlist']}) must be at most the number of items "
                              f"({count})", field="nlist")

    @property
    def _augmented(self) -> bool:
        return self.build_params["index_type"].startswith("IVF")

    def describe(self) -> dict[str, Any]:
        return {"milvus": {"uri": self.build_params["uri"] or f"Milvus Lite ({LITE_FOLDER})",
                           "collection": self.collection}}

    # ----------------------------------------------------------------- connection and layout
    def _connect(self, lite_folder: str | None = None) -> None:
        uri = self.build_params["uri"]
        if uri:
            self.client = MilvusClient(uri=uri, token=os.environ.get("MILVUS_TOKEN", ""))
        else:
            self._lite = lite_folder or tempfile.mkdtemp(prefix="tte-milvus-")
            self.client = MilvusClient(os.path.join(self._lite, LITE_FOLDER))
        self._finalizer = weakref.finalize(self, _release_lite, self._lite, self.client)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self.client, self._lite, self._finalizer = None, None, None

    def _vectors(self, embeddings: np.ndarray) -> np.ndarray:
        if not self._augmented:
            return embeddings
        if not self.build_params["max_norm"]:
            self.build_params["max_norm"] = float(np.linalg.norm(embeddings, axis=1).max())
        norms = np.einsum("ij,ij->i", embeddings, embeddings)
        extra = np.sqrt(np.maximum(self.build_params["max_norm"] ** 2 - norms, 0.0))
        return np.hstack([embeddings, extra[:, None]]).astype(np.float32)

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        if not self._augmented:
            return queries
        return np.hstack([queries, np.zeros((len(queries), 1), np.float32)])

    def _index_params(self):
        p = self.build_params
        params = {"HNSW": {"M": p["m"], "efConstruction": p["ef_construction"]},
                  "HNSW_SQ": {"M": p["m"], "efConstruction": p["ef_construction"], "sq_type": "SQ8"},
                  "IVF_FLAT": {"nlist": p["nlist"]}, "IVF_SQ8": {"nlist": p["nlist"]},
                  "IVF_PQ": {"nlist": p["nlist"], "m": p["pq_m"], "nbits": 8},
                  "FLAT": {}}[p["index_type"]]
        index = self.client.prepare_index_params()
        # pymilvus 3 sends each setting as its own key; Milvus Lite reads only a JSON "params" key
        # (and ignores the rest silently). Milvus servers read both, so both are sent.
        index.add_index(field_name=VECTOR, index_type=p["index_type"], metric_type="IP",
                        params={**params, "params": params} if params else {})
        return index

    def _upsert(self, ids: np.ndarray, vectors: np.ndarray, replace: bool = True) -> None:
        write = self.client.upsert if replace else self.client.insert
        for start in range(0, len(ids), INSERT_BATCH):
            write(self.collection, [{PRIMARY_KEY: str(i), VECTOR: v}
                                    for i, v in zip(ids[start:start + INSERT_BATCH],
                                                    vectors[start:start + INSERT_BATCH].tolist())])

    def _settle(self) -> None:
        """Flushes and waits until Milvus has indexed every row, then loads the collection.

        Milvus indexes new segments in the background, and a search meanwhile scans unindexed rows
        exhaustively (which would mislead calibration and timing). A server reports the rows still
        pending; Milvus Lite does not, but closing it drains its background work and loading it
        again builds every missing segment index before returning.
        """
        self.client.flush(self.collection)
        if self._lite is not None:
            lite = self._lite
            self._finalizer.detach()
            _release_lite(None, self.client)
            from milvus_lite.server_manager import server_manager_instance
            server_manager_instance.release_server(os.path.join(lite, LITE_FOLDER))
            self._connect(lite)
        else:
            deadline = time.monotonic() + INDEX_TIMEOUT_S
            while True:
                state = self.client.describe_index(self.collection, VECTOR) or {}
                if str(state.get("state", "")).lower() == "failed":
                    raise MilvusException(message=f"index build failed: {state}")
                if int(state.get("pending_index_rows", 0)) == 0:
                    break
                if time.monotonic() > deadline:
                    raise MilvusException(message=f"index not built after {INDEX_TIMEOUT_S} s")
                time.sleep(0.1)
        self.client.load_collection(self.collection)

    def _set_rows(self, ids: np.ndarray) -> None:
        self.item_ids = np.asarray(ids)
        self._row_of = {str(i): row for row, i in enumerate(self.item_ids)}

    # ----------------------------------------------------------------- build, search, update
    def _build(self, embeddings):
        if self.item_ids is None:
            raise ValueError("the milvus backend stores items by id: build it with ids")
        ids = np.asarray(self.item_ids)
        vectors = self._vectors(embeddings)
        self._connect()
        self.collection = f"tte_items_{secrets.token_hex(6)}"
        try:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            longest = max((len(str(i).encode("utf-8")) for i in ids), default=1)
            schema.add_field(PRIMARY_KEY, DataType.VARCHAR, is_primary=True,
                             max_length=int(min(65535, max(64, longest))))
            schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
            self.client.create_collection(self.collection, schema=schema)
            self.client.create_index(self.collection, self._index_params(), sync=False)
            self._upsert(ids, vectors, replace=False)
            self._settle()
        except MilvusException as exc:
            self.close()
            raise ConfigError(f"Milvus could not build the collection ({exc})", field="uri") from None
        self._set_rows(ids)

    def calibration_ladders(self, k):
        p = self.build_params
        if p["index_type"] == "FLAT":
            return []
        if p["index_type"].startswith("HNSW"):
            return [[({"ef": ef}, 2) for ef in effort_rungs(4096, least=2 * max(k, 10))]]
        exact_codes = p["index_type"] == "IVF_FLAT"
        return [[({"nprobe": n}, rerank) for n in effort_rungs(p["nlist"])]
                for rerank in ((2,) if exact_codes else (3, 10))]

    def search(self, queries, k):
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        limit = int(min(k, MAX_LIMIT, len(self._row_of)))
        key = "ef" if self.build_params["index_type"].startswith("HNSW") else "nprobe"
        params = {} if self.build_params["index_type"] == "FLAT" else {
            key: int(max(self.search_params[key], limit) if key == "ef" else self.search_params[key])}
        results = self.client.search(self.collection, data=self._queries(queries).tolist(),
                                     anns_field=VECTOR, limit=limit, output_fields=[],
                                     search_params={"metric_type": "IP", "params": params})
        rows = np.full((len(queries), max(int(k), 1)), -1, np.int64)
        scores = np.full(rows.shape, -np.inf, np.float32)
        for q, hits in enumerate(results):
            for j, hit in enumerate(hits):
                rows[q, j] = self._row_of.get(str(hit[PRIMARY_KEY]), -1)
                scores[q, j] = hit["distance"]
        return scores, rows

    def reencoded(self, embeddings, previous_embeddings, ids=None):
        """Upserts the items whose embedding changed or that are new, deletes the removed ones.

        The collection keeps its index settings (Milvus indexes new segments as they come); an
        IVF collection whose MIPS transform no longer covers the longest item is rebuilt instead.
        """
        if ids is None:
            return None, "the milvus backend needs the item ids to update a collection; rebuilt"
        if self._augmented:
            longest = float(np.linalg.norm(embeddings, axis=1).max())
            if longest > self.build_params["max_norm"] * 1.01:
                return None, (f"an item embedding is longer ({longest:.4g}) than the transform's R "
                              f"({self.build_params['max_norm']:.4g}); rebuilt")
        ids = np.asarray(ids)
        old_rows = {str(i): r for r, i in enumerate(self.item_ids)}
        new_keys = [str(i) for i in ids]
        common = np.array([old_rows.get(key, -1) for key in new_keys], np.int64)
        kept = common >= 0
        changed = np.zeros(len(ids), bool)
        changed[kept] = np.any(previous_embeddings[common[kept]] != embeddings[kept], axis=1)
        write = changed | ~kept
        removed = sorted(set(old_rows) - set(new_keys))
        backend = type(self)(self.build_params, self.search_params)
        backend.collection = self.collection
        try:
            if self._lite is not None:
                target = tempfile.mkdtemp(prefix="tte-milvus-")
                self.client.flush(self.collection)
                shutil.copytree(os.path.join(self._lite, LITE_FOLDER),
                                os.path.join(target, LITE_FOLDER),
                                ignore=shutil.ignore_patterns("LOCK"))
                backend._connect(target)
            else:
                backend._connect()
            backend._upsert(ids[write], backend._vectors(embeddings[write]))
            if removed:
                for start in range(0, len(removed), INSERT_BATCH):
                    backend.client.delete(backend.collection, ids=removed[start:start + INSERT_BATCH])
            backend._settle()
        except MilvusException as exc:
            backend.close()
            return None, f"the Milvus collection could not be updated ({exc}); rebuilt"
        backend._set_rows(ids)
        return backend, (f"upserted {int(changed.sum()):,} changed and {int((~kept).sum()):,} new "
                         f"items and deleted {len(removed):,} in the Milvus collection "
                         f"({len(ids):,} items)")

    # ----------------------------------------------------------------- save and load
    def _save(self, folder):
        location = {"collection": self.collection, "uri": self.build_params["uri"],
                    "lite_folder": LITE_FOLDER if self._lite else None}
        self.client.flush(self.collection)
        if self._lite:
            shutil.copytree(os.path.join(self._lite, LITE_FOLDER), os.path.join(folder, LITE_FOLDER),
                            ignore=shutil.ignore_patterns("LOCK"))
        with open(os.path.join(folder, LOCATION_FILE), "w", encoding="utf-8") as f:
            json.dump(location, f, indent=2)

    def _load(self, folder, embeddings):
        from tte_tfrs.exports.reader import read_json

        path = os.path.join(folder, LOCATION_FILE)
        location = read_json(path, "Milvus location")
        name = location.get("collection") if isinstance(location, dict) else None
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            raise ExportError(f"{path}: expected a collection name; rebuild the index with tte-index")
        if location.get("uri", "") != self.build_params["uri"]:
            raise ExportError(f"{path}: names another database than the index settings; rebuild "
                              "the index with tte-index")
        if self.item_ids is None:
            raise ValueError("the milvus backend stores items by id: load it with ids")
        self.collection = name
        where = self.build_params["uri"] or os.path.join(folder, LITE_FOLDER)
        try:
            if self.build_params["uri"]:
                self._connect()
            else:
                copy = tempfile.mkdtemp(prefix="tte-milvus-")
                shutil.copytree(os.path.join(folder, LITE_FOLDER), os.path.join(copy, LITE_FOLDER))
                self._connect(copy)
            if not self.client.has_collection(name):
                raise ExportError(f"{where}: has no collection {name!r} (dropped, or refreshed in "
                                  "place into a later version); rebuild the index with tte-index")
            self.client.load_collection(name)
            count = int(self.client.get_collection_stats(name).get("row_count", -1))
            if count != len(embeddings):
                raise ExportError(f"{where}: collection {name!r} holds {count} items, the export "
                                  f"{len(embeddings)}; rebuild the index with tte-index")
            self._check_sample(where, embeddings)
        except (MilvusException, OSError) as exc:
            self.close()
            raise ExportError(f"{where}: the Milvus collection {name!r} cannot be opened ({exc}); "
                              "rebuild the index with tte-index") from None
        except ExportError:
            self.close()
            raise
        self._set_rows(self.item_ids)

    def _check_sample(self, where: str, embeddings: np.ndarray) -> None:
        """A few stored vectors must equal the export's: a collection updated for another version
        (or holding other items) is refused."""
        rng = np.random.default_rng(len(embeddings))
        rows = rng.choice(len(embeddings), size=min(CHECKED_VECTORS, len(embeddings)), replace=False)
        found = self.client.get(self.collection, ids=[str(self.item_ids[r]) for r in rows],
                                output_fields=[VECTOR])
        stored = {str(hit[PRIMARY_KEY]): np.asarray(hit[VECTOR], np.float32) for hit in found}
        expected = self._vectors(embeddings[rows])
        for r, vector in zip(rows, expected):
            got = stored.get(str(self.item_ids[r]))
            if got is None or got.shape != vector.shape or not np.array_equal(got, vector):
                raise ExportError(f"{where}: collection {self.collection!r} holds other vectors than "
                                  f"the export (item {self.item_ids[r]!r}); rebuild the index with "
                                  "tte-index")
