"""The milvus backend against Milvus Lite: exhaustive settings equal exact search, save/load and
refresh round trips, and the same code against a Milvus server (Milvus Lite's own gRPC server on
127.0.0.1)."""

import os

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install \"tte_tfrs[milvus]\")")
pytest.importorskip("milvus_lite", reason="milvus-lite (the embedded engine) is not installed")

from tte_tfrs.errors import ExportError  # noqa: E402
from tte_tfrs.retrieval import ItemIndex  # noqa: E402
from tte_tfrs.retrieval.milvus_backend import LITE_FOLDER  # noqa: E402
from tte_tfrs.retrieval.synthetic import (  # noqa: E402
    TowerShape,
    item_ids,
    tower_shaped_items,
    tower_shaped_users,
)

N_ITEMS, K = 3000, 10
SHAPE = TowerShape(user_common_length=0.3, duplicate_share=0.05)


@pytest.fixture(scope="module")
def catalogue():
    items = tower_shaped_items(N_ITEMS, SHAPE, seed=3)
    users = tower_shaped_users(30, SHAPE, seed=4)
    ids = item_ids(N_ITEMS)
    return items, users, ids, ItemIndex.build(items, ids, "exact").search(users, K)


@pytest.fixture(scope="module")
def lite(catalogue):
    items, _, ids, _ = catalogue
    index = ItemIndex.build(items, ids, "milvus")
    yield index
    index.backend.close()


@pytest.mark.parametrize("index_type, search", [("HNSW", {"ef": 4096}), ("IVF_FLAT", {"nprobe": 16}),
                                                ("FLAT", {})])
def test_exhaustive_settings_equal_exact_search(index_type, search, catalogue, lite):
    items, users, ids, (truth_scores, truth_rows) = catalogue
    if index_type == "HNSW":
        index = lite
    else:
        index = ItemIndex.build(items, ids, "milvus", {"index_type": index_type, "nlist": 16})
    saved = dict(index.backend.search_params)
    try:
        index.backend.set_search_params(**search)
        scores, rows = index.search(users, K, fallback=False)
        backend_scores, backend_rows = index.backend.search(users, 20)
    finally:
        index.backend.search_params = saved
        if index is not lite:
            index.backend.close()
    np.testing.assert_array_equal(rows, truth_rows)
    np.testing.assert_array_equal(scores, truth_scores)
    # Milvus's own scores are the inner products (IVF searches the MIPS-augmented vectors).
    expected = np.einsum("qd,qcd->qc", users, items[backend_rows])
    np.testing.assert_allclose(backend_scores, expected, rtol=1e-4, atol=1e-4)


def test_saved_lite_index_loads_back_identical_and_stays_unchanged(catalogue, lite, tmp_path):
    items, users, ids, _ = catalogue
    before = lite.search(users, K)
    folder = str(tmp_path / "milvus")
    meta = lite.save(folder, export_version=2)
    assert os.path.isdir(os.path.join(folder, LITE_FOLDER))
    assert meta["milvus"]["collection"] == lite.backend.collection
    first = ItemIndex.load(folder, items, ids, export_version=2)
    second = ItemIndex.load(folder, items, ids, export_version=2)       # its own copy: no lock
    try:
        for loaded in (first, second):
            after = loaded.search(users, K)
            np.testing.assert_array_equal(before[1], after[1])
            np.testing.assert_array_equal(before[0], after[0])
        assert first.backend.search_params == lite.backend.search_params
    finally:
        first.backend.close()
        second.backend.close()
    # Readers never write into the export: the saved files still match their checksums.
    ItemIndex.load(folder, items, ids, export_version=2).backend.close()


def changed_catalogue(items, ids):
    """An update: 40 embeddings changed (longer: some reach users' top 10), 50 items added (ids
    interleaved), 30 removed. Returns (items, ids, ids of the changed items still there)."""
    rng = np.random.default_rng(9)
    new_items = items.copy()
    changed = rng.choice(len(items), 40, replace=False)
    new_items[changed, :-2] *= 3.0
    added = tower_shaped_items(50, SHAPE, seed=11)
    added_ids = np.array([f"{ids[n]}-new" for n in range(0, 2500, 50)], dtype=object)
    removed = rng.choice(len(items), 30, replace=False)
    keep = np.ones(len(items), bool)
    keep[removed] = False
    all_ids = np.concatenate([ids[keep], added_ids])
    all_items = np.concatenate([new_items[keep], added])
    order = np.argsort(all_ids.astype(str))
    return all_items[order], all_ids[order], sorted(ids[list(set(changed) - set(removed))])


def assert_stored(index, items, ids, wanted):
    """The collection holds exactly the catalogue's vectors for the `wanted` ids."""
    backend = index.backend
    found = backend.client.get(backend.collection, ids=[str(i) for i in wanted],
                               output_fields=["embedding"])
    stored = {hit["item_id"]: np.asarray(hit["embedding"], np.float32) for hit in found}
    rows = {str(i): r for r, i in enumerate(ids)}
    assert sorted(stored) == sorted(str(i) for i in wanted)
    for key, vector in stored.items():
        np.testing.assert_array_equal(vector, backend._vectors(items[rows[key]:rows[key] + 1])[0])


def test_refresh_upserts_changes_and_keeps_the_parent(catalogue, lite, tmp_path):
    items, users, ids, (truth_scores, truth_rows) = catalogue
    parent_folder = str(tmp_path / "v1")
    lite.save(parent_folder, export_version=1)
    parent = ItemIndex.load(parent_folder, items, ids, export_version=1)
    new_items, new_ids, changed = changed_catalogue(items, ids)
    try:
        refreshed, how = parent.refreshed(new_items, new_ids, "milvus")
        assert how.startswith(f"upserted {len(changed)} changed and 50 new items and deleted 30")
        assert_stored(refreshed, new_items, new_ids, changed)
        assert refreshed.backend.client.get_collection_stats(refreshed.backend.collection)[
            "row_count"] == len(new_ids)
        exact = ItemIndex.build(new_items, new_ids, "exact").search(users, K)
        refreshed.backend.set_search_params(ef=4096)
        np.testing.assert_array_equal(refreshed.search(users, K)[1], exact[1])
        refreshed.save(str(tmp_path / "v2"), export_version=2)
        refreshed.backend.close()
        reloaded = ItemIndex.load(str(tmp_path / "v2"), new_items, new_ids, export_version=2)
        reloaded.backend.set_search_params(ef=4096)
        np.testing.assert_array_equal(reloaded.search(users, K)[1], exact[1])
        reloaded.backend.close()
        # Milvus Lite keeps one copy per version: the parent still answers for a rollback.
        again = ItemIndex.load(parent_folder, items, ids, export_version=1)
        again.backend.set_search_params(ef=4096)
        np.testing.assert_array_equal(again.search(users, K)[1], truth_rows)
        again.backend.close()
    finally:
        parent.backend.close()


@pytest.fixture
def server(tmp_path):
    """Milvus Lite's gRPC server on 127.0.0.1: stands in for a Milvus server or cluster."""
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    grpc_server, db, port = start_server_in_thread(str(tmp_path / "server-data"), "127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}"
    grpc_server.stop(grace=0)
    db.close()


def test_the_same_code_talks_to_a_server(catalogue, server, tmp_path):
    items, users, ids, (truth_scores, truth_rows) = catalogue
    index = ItemIndex.build(items, ids, "milvus", {"uri": server}, {"ef": 4096})
    folder = str(tmp_path / "remote")
    meta = index.save(folder, export_version=1)
    assert meta["milvus"]["uri"] == server and not os.path.exists(os.path.join(folder, LITE_FOLDER))
    loaded = ItemIndex.load(folder, items, ids, export_version=1)
    np.testing.assert_array_equal(loaded.search(users, K)[1], truth_rows)
    new_items, new_ids, changed = changed_catalogue(items, ids)
    refreshed, how = loaded.refreshed(new_items, new_ids, "milvus")
    assert how.startswith(f"upserted {len(changed)} changed")
    assert_stored(refreshed, new_items, new_ids, changed)
    exact = ItemIndex.build(new_items, new_ids, "exact").search(users, K)
    np.testing.assert_array_equal(refreshed.search(users, K)[1], exact[1])
    # On a server the update happened in place: the parent's index now refuses to load.
    with pytest.raises(ExportError, match="holds (other vectors|[0-9]+ items)"):
        ItemIndex.load(folder, items, ids, export_version=1)
    for each in (index, loaded, refreshed):
        each.backend.close()
