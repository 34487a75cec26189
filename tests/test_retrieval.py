"""Every in-process backend against exact search on the same embeddings: results, scores, ties, one
scoring path, settings checked, save/load round trips and damaged files."""

import json
import os

import numpy as np
import pytest

from tte_tfrs.errors import ConfigError, ExportError
from tte_tfrs.retrieval import (
    BACKENDS,
    IndexMismatchError,
    ItemIndex,
    get_backend,
    installed_backends,
    scann_backend,
)
from tte_tfrs.retrieval.base import top_k_rows
from tte_tfrs.retrieval.exact import ExactBackend
from tte_tfrs.retrieval.scoring import exact_scores, rank

N_ITEMS, DIM, N_QUERIES, K = 6000, 10, 100, 10
# Milvus has its own tests (tests/test_milvus.py): its embedded engine is slow per query.
ANN = [name for name in installed_backends() if name not in ("exact", "milvus")]
# Settings small enough for a 6,000-item test catalogue, large enough that the ANN index is used
# (IVF-PQ needs 39 x max(nlist, 2^nbits) training points: 2,496 here).
BUILD = {"faiss-ivfpq": {"nlist": 64, "nbits": 6}, "faiss-hnsw": {}, "scann": {"num_leaves": 60}}
# Every cell / leaf / a beam as large as the catalogue, and enough candidates for PQ's estimates.
EXHAUSTIVE = {"faiss-ivfpq": ({"nprobe": 64}, 30), "faiss-hnsw": ({"ef_search": 2000}, 10),
              "scann": ({"leaves_to_search": 60, "pre_reorder_num_neighbors": N_ITEMS}, 10)}


def rating_like_embeddings(seed=0):
    """Item and user embeddings shaped like the towers' output: [latent, 1, b_i] and
    [latent, mu+b_u, 1]; every 50th item copies the vector of a higher-scoring item (ties)."""
    rng = np.random.default_rng(seed)
    items = np.empty((N_ITEMS, DIM), np.float32)
    items[:, :-2] = rng.normal(0, 0.5, (N_ITEMS, DIM - 2)) * rng.lognormal(0, 0.3, (N_ITEMS, 1))
    items[:, -2] = 1.0
    items[:, -1] = rng.normal(0, 0.3, N_ITEMS)
    norms = np.linalg.norm(items, axis=1)
    popular = np.argsort(-norms)[:60]            # long vectors: often in someone's top 10
    for n, target in enumerate(range(7, N_ITEMS, 50)):
        items[target] = items[popular[n % len(popular)]]
    users = np.empty((N_QUERIES, DIM), np.float32)
    users[:, :-2] = rng.normal(0, 0.5, (N_QUERIES, DIM - 2))
    users[:, -2] = 7.0 + rng.normal(0, 0.3, N_QUERIES)
    users[:, -1] = 1.0
    ids = np.array([f"item-{n:05d}" for n in range(N_ITEMS)], dtype=object)
    return items, users, ids


def numpy_truth(items, users, k):
    """Ground truth by numpy alone: float64 products rounded to float32 (the scores the package
    returns), ties to the lower row (stable sort)."""
    full = (users.astype(np.float64) @ items.astype(np.float64).T).astype(np.float32)
    order = np.argsort(-full, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(full, order, axis=1)


@pytest.fixture(scope="module")
def data():
    items, users, ids = rating_like_embeddings()
    truth_rows, truth_scores = numpy_truth(items, users, K)
    return items, users, ids, truth_scores, truth_rows


@pytest.fixture(scope="module")
def built(data):
    items, _, ids, _, _ = data
    return {name: ItemIndex.build(items, ids, name, BUILD[name]) for name in ANN}


def exhaustive(index, name):
    """A context that switches `index` to exhaustive settings and back."""
    class Switch:
        def __enter__(self):
            self.saved = dict(index.backend.search_params), index.rerank
            params, index.rerank = EXHAUSTIVE[name]
            index.backend.set_search_params(**params)

        def __exit__(self, *exc):
            index.backend.search_params, index.rerank = self.saved
    return Switch()


def test_catalogue_has_ties_in_the_top_k(data):
    items, users, _, _, truth_rows = data
    assert any(len(np.unique(items[row], axis=0)) < K for row in truth_rows)


@pytest.mark.parametrize("k", [1, K, 400])
def test_exact_backend_matches_numpy(k, data):
    items, users, ids, _, _ = data
    rows, scores = numpy_truth(items, users, k)
    got_scores, got_rows = ItemIndex.build(items, ids, "exact").search(users, k)
    np.testing.assert_array_equal(got_rows, rows)
    np.testing.assert_allclose(got_scores, scores, rtol=1e-6)


@pytest.mark.parametrize("name", ANN)
def test_exhaustive_settings_equal_exact_through_the_index(name, data, built, monkeypatch):
    """Exhaustive search settings give exactly the exact answer, ties to the lower id included,
    with the candidates coming from the ANN index (never all items, never the exact fallback)."""
    items, users, _, truth_scores, truth_rows = data
    index = built[name]
    assert index.name == name
    asked = []
    search = index.backend.search
    monkeypatch.setattr(index.backend, "search", lambda q, k: asked.append(k) or search(q, k))
    with exhaustive(index, name):
        scores, rows = index.search(users, K, fallback=False)
    assert asked and max(asked) <= N_ITEMS // 10
    np.testing.assert_array_equal(rows, truth_rows)
    np.testing.assert_allclose(scores, truth_scores, rtol=1e-6)


@pytest.mark.parametrize("name", ANN + ["exact"])
def test_backend_scores_are_the_inner_products(name, data, built):
    """The backend's own scores estimate <query, item> (a sign or scale error fails)."""
    items, users, ids, _, _ = data
    backend = built[name].backend if name in built else ExactBackend.build(items)
    scores, rows = backend.search(users, 50)
    valid = rows >= 0
    truth = np.einsum("qd,qcd->qc", users.astype(np.float64), items[np.maximum(rows, 0)])[valid]
    if name == "faiss-ivfpq":                  # PQ estimates: close, not exact
        assert np.corrcoef(scores[valid], truth)[0, 1] > 0.5
        assert np.abs(scores[valid] - truth).mean() < 0.1 * np.abs(truth).mean()
    else:
        np.testing.assert_allclose(scores[valid], truth, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(np.where(valid, scores, -1e30), axis=1) <= 1e-5)


def test_one_scoring_function_gives_the_same_bits_on_every_path(data):
    """BLAS products of different shapes can differ in the last bit; exact_scores cannot."""
    items, users, _, _, _ = data
    rows = np.argsort(-(users @ items.T), axis=1)[:, :200]
    whole = exact_scores(users, items, rows)
    one_at_a_time = np.concatenate([exact_scores(users[q:q + 1], items, rows[q:q + 1])
                                    for q in range(len(users))])
    column_blocks = np.concatenate([exact_scores(users, items, rows[:, c:c + 7])
                                    for c in range(0, rows.shape[1], 7)], axis=1)
    np.testing.assert_array_equal(whole, one_at_a_time)
    np.testing.assert_array_equal(whole, column_blocks)


@pytest.mark.parametrize("name", ANN + ["exact"])
def test_same_embeddings_same_bits_whatever_the_backend_or_batch(name, data, built):
    items, users, ids, _, truth_rows = data
    index = built.get(name) or ItemIndex.build(items, ids, "exact")
    exact_scores_, exact_rows = ItemIndex.build(items, ids, "exact").search(users, K)
    with exhaustive(index, name) if name in built else _nothing():
        batch_scores, batch_rows = index.search(users, K)
        single = [index.search(users[q:q + 1], K) for q in range(0, len(users), 9)]
    np.testing.assert_array_equal(batch_rows, exact_rows)
    np.testing.assert_array_equal(batch_scores, exact_scores_)           # bit for bit
    for n, (scores, rows) in zip(range(0, len(users), 9), single):
        np.testing.assert_array_equal(rows[0], batch_rows[n])
        np.testing.assert_array_equal(scores[0], batch_scores[n])


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_recall_rises_with_nprobe(data, built):
    if "faiss-ivfpq" not in built:
        pytest.skip("faiss not installed")
    items, users, _, _, truth_rows = data
    backend = built["faiss-ivfpq"].backend          # the raw backend: no exact fallback in between
    saved = dict(backend.search_params)
    found = []
    for nprobe in (1, 4, 16, 64):
        backend.set_search_params(nprobe=nprobe)
        _, candidates = backend.search(users, 100)
        _, best = rank(exact_scores(users, items, candidates), candidates, K)
        found.append(np.mean([len(set(a) & set(b)) / K for a, b in zip(best, truth_rows)]))
    backend.search_params = saved
    assert found == sorted(found) and found[0] < found[-1]


@pytest.mark.parametrize("name", installed_backends())
def test_saved_index_loads_back_identical(name, data, built, tmp_path):
    if name == "milvus":
        pytest.skip("tests/test_milvus.py")
    items, users, ids, _, _ = data
    index = built.get(name) or ItemIndex.build(items, ids, name)
    index.rerank = 7
    before = index.search(users, K)
    index.save(str(tmp_path / name), export_version=3)
    loaded = ItemIndex.load(str(tmp_path / name), items, ids, export_version=3)
    after = loaded.search(users, K)
    index.rerank = 10
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert loaded.backend.build_params == index.backend.build_params
    assert loaded.backend.search_params == index.backend.search_params and loaded.rerank == 7


def test_loading_refuses_other_embeddings_or_version(data, tmp_path):
    items, _, ids, _, _ = data
    ItemIndex.build(items, ids, "exact").save(str(tmp_path / "i"), export_version=1)
    with pytest.raises(IndexMismatchError, match="export_version"):
        ItemIndex.load(str(tmp_path / "i"), items, ids, export_version=2)
    changed = items.copy()
    changed[0, 0] += 1.0
    with pytest.raises(IndexMismatchError, match="fingerprint"):
        ItemIndex.load(str(tmp_path / "i"), changed, ids, export_version=1)
    with pytest.raises(IndexMismatchError, match="count"):
        ItemIndex.load(str(tmp_path / "i"), items[:-1], ids[:-1], export_version=1)
    with pytest.raises(FileNotFoundError, match="tte-index"):
        ItemIndex.load(str(tmp_path / "nothing"), items, ids, export_version=1)


def damage(path):
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 3, len(data), 97):
        data[i] ^= 0x5A
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("name", ANN)
def test_a_damaged_index_file_is_named(name, data, built, tmp_path):
    items, _, ids, _, _ = data
    folder = str(tmp_path / name)
    built[name].save(folder, export_version=1)
    victim = "index.faiss" if name.startswith("faiss") else "hashed_dataset.npy"
    damage(os.path.join(folder, victim))
    with pytest.raises(ExportError, match=f"{victim}: damaged"):
        ItemIndex.load(folder, items, ids, export_version=1)
    # Below the checksum, the library's own error also becomes a message naming the file.
    with open(os.path.join(folder, victim), "r+b") as f:
        f.truncate(40)
    with pytest.raises(ExportError, match="damaged") as caught:
        get_backend(name).load(folder, items, ids)
    assert folder in str(caught.value)


@pytest.mark.parametrize("where", ["index.json", "backend.json"])
def test_saved_search_settings_are_range_checked(where, data, built, tmp_path):
    items, _, ids, _, _ = data
    folder = str(tmp_path / "hnsw")
    built["faiss-hnsw"].save(folder, export_version=1)
    path = os.path.join(folder, where)
    saved = json.load(open(path))
    saved["search_params"]["ef_search"] = -5
    json.dump(saved, open(path, "w"))
    load = (lambda: ItemIndex.load(folder, items, ids, export_version=1)) if where == "index.json" \
        else (lambda: get_backend("faiss-hnsw").load(folder, items))
    with pytest.raises(ExportError, match=rf"{where}: ef_search must be at least 1.*, got -5"):
        load()
    open(path, "w").write("{not json")
    with pytest.raises(ExportError, match=f"{where}: not a valid"):
        load()


@pytest.mark.parametrize("backend, settings, field", [
    ("faiss-hnsw", {"m": 0}, "m"), ("faiss-hnsw", {"m": 1}, "m"),          # 1 crashes FAISS
    ("faiss-ivfpq", {"nbits": 0}, "nbits"), ("faiss-ivfpq", {"m": 40}, "m"),
    ("faiss-ivfpq", {"nlist": -3}, "nlist"), ("scann", {"num_leaves": 0}, "num_leaves"),
    ("scann", {"dims_per_block": 11}, "dims_per_block"), ("faiss-ivfpq", {"nlist": 2.5}, "nlist")])
def test_build_settings_are_checked_before_building(backend, settings, field, data):
    if backend not in installed_backends():
        pytest.skip(f"{backend} not installed")
    items, _, ids, _, _ = data
    with pytest.raises(ConfigError, match=field) as caught:
        ItemIndex.build(items, ids, backend, settings)
    assert caught.value.field == field


def test_search_settings_are_checked(data, built):
    items, _, ids, _, _ = data
    with pytest.raises(ConfigError, match="nprobe must be at least 1"):
        built["faiss-ivfpq"].backend.set_search_params(nprobe=0)
    with pytest.raises(ConfigError, match="leaves_to_search"):
        ItemIndex.build(items, ids, "scann", BUILD["scann"], {"leaves_to_search": -1})
    assert built["faiss-ivfpq"].backend.search_params["nprobe"] > 0


def test_small_catalogue_falls_back_to_exact_with_a_note(data):
    items, users, ids, truth_scores, truth_rows = data
    index = ItemIndex.build(items[:500], ids[:500], "faiss-ivfpq")
    assert index.name == "exact" and "exact search instead" in index.notes[0]


def test_ties_go_to_the_lower_row_and_exclusions_are_honoured():
    items = np.array([[1.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.5, 0.0], [2.0, 0.0]], np.float32)
    ids = np.array(["a", "b", "c", "d", "e"], dtype=object)
    index = ItemIndex.build(items, ids, "exact")
    scores, rows = index.search(np.array([[1.0, 0.0]], np.float32), 3)
    assert rows.tolist() == [[1, 2, 4]]
    _, rows = index.search(np.array([[1.0, 0.0]], np.float32), 3, exclude_rows=[[2]])
    assert rows.tolist() == [[1, 4, 0]]
    scores, rows = index.search(np.array([[1.0, 0.0]], np.float32), 3, exclude_rows=[[0, 1, 2]])
    assert rows.tolist() == [[4, 3, -1]] and np.isneginf(scores[0, 2])
    assert top_k_rows(np.array([[1.0, 3.0, 3.0, 2.0]]), 2).tolist() == [[1, 2]]


def test_exact_search_returns_every_item_tied_with_the_kth():
    """Many items tied at the k-th place (items sharing one embedding): all of them come back as
    candidates, so the lowest ids win whatever order FAISS found them in."""
    rng = np.random.default_rng(3)
    items = rng.normal(size=(3000, 6)).astype(np.float32)
    items[::7] = items[5] * 4                   # 429 copies of one long vector: the best items
    query = items[5:6]
    copies = np.flatnonzero((items == items[0]).all(axis=1))
    _, window = ExactBackend.build(items).search(query, 10)
    assert len(copies) == 429 and set(copies) <= set(window[0])
    _, rows = ItemIndex.build(items, np.arange(3000), "exact").search(query, 10)
    assert rows[0].tolist() == copies[:10].tolist()


def test_unknown_backend_and_settings_are_refused(data):
    items, _, ids, _, _ = data
    with pytest.raises(ConfigError, match="unknown backend"):
        get_backend("annoy")
    with pytest.raises(ValueError, match="has no build setting 'nlsit'"):
        ItemIndex.build(items, ids, "faiss-ivfpq", {"nlsit": 5})
    assert set(BACKENDS) == {"faiss-ivfpq", "scann", "faiss-hnsw", "milvus", "exact"}


def test_scann_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(scann_backend, "scann_ops_pybind", None)
    with pytest.raises(ConfigError, match=r'pip install "tte_tfrs\[scann\]"'):
        get_backend("scann")
