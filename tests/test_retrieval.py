"""Every installed backend against exact search on the same embeddings, plus save/load round trips."""

import numpy as np
import pytest

from tte_tfrs.errors import ConfigError
from tte_tfrs.retrieval import (
    BACKENDS,
    IndexMismatchError,
    ItemIndex,
    get_backend,
    installed_backends,
    scann_backend,
)
from tte_tfrs.retrieval.base import top_k_rows

N_ITEMS, DIM, N_QUERIES, K = 6000, 10, 100, 10
ANN = [name for name in installed_backends() if name != "exact"]
# Settings small enough for a 6,000-item test catalogue.
BUILD = {"faiss-ivfpq": {"nlist": 64, "nbits": 6}, "faiss-hnsw": {}, "scann": {"num_leaves": 60}}
EXHAUSTIVE = {"faiss-ivfpq": {"nprobe": 64}, "faiss-hnsw": {"ef_search": 2000},
              "scann": {"leaves_to_search": 60, "pre_reorder_num_neighbors": N_ITEMS}}
RECALL_FLOOR = {"faiss-ivfpq": 0.95, "faiss-hnsw": 0.95, "scann": 0.95}


def rating_like_embeddings(seed=0):
    """Item and user embeddings shaped like the towers' output: [latent, 1, b_i] and [latent, mu+b_u, 1]."""
    rng = np.random.default_rng(seed)
    items = np.empty((N_ITEMS, DIM), np.float32)
    items[:, :-2] = rng.normal(0, 0.5, (N_ITEMS, DIM - 2)) * rng.lognormal(0, 0.3, (N_ITEMS, 1))
    items[:, -2] = 1.0
    items[:, -1] = rng.normal(0, 0.3, N_ITEMS)
    users = np.empty((N_QUERIES, DIM), np.float32)
    users[:, :-2] = rng.normal(0, 0.5, (N_QUERIES, DIM - 2))
    users[:, -2] = 7.0 + rng.normal(0, 0.3, N_QUERIES)
    users[:, -1] = 1.0
    ids = np.array([f"item-{n:05d}" for n in range(N_ITEMS)], dtype=object)
    return items, users, ids


def tower_like_embeddings(seed=1, clusters=40, latent=16):
    """Scales measured on a trained Book-Crossing export (see BENCHMARKS.md): item latent parts small
    (std 0.056 per dimension) and clustered, item biases std 0.05, user latent std 0.65, user bias
    plus mean about 3.5 +- 0.45. Default search settings are judged on this shape."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 0.05, (clusters, latent))
    items = np.empty((N_ITEMS, latent + 2), np.float32)
    items[:, :latent] = centers[rng.integers(clusters, size=N_ITEMS)] + rng.normal(
        0, 0.025, (N_ITEMS, latent))
    items[:, -2] = 1.0
    items[:, -1] = rng.normal(0, 0.05, N_ITEMS)
    users = np.empty((N_QUERIES, latent + 2), np.float32)
    users[:, :latent] = rng.normal(0, 0.65, (N_QUERIES, latent))
    users[:, -2] = rng.normal(3.5, 0.45, N_QUERIES)
    users[:, -1] = 1.0
    ids = np.array([f"item-{n:05d}" for n in range(N_ITEMS)], dtype=object)
    return items, users, ids


@pytest.fixture(scope="module")
def tower_like():
    items, users, ids = tower_like_embeddings()
    _, truth_rows = ItemIndex.build(items, ids, "exact").search(users, K)
    indexes = {name: ItemIndex.build(items, ids, name, BUILD[name]) for name in ANN}
    return users, truth_rows, indexes


@pytest.fixture(scope="module")
def data():
    items, users, ids = rating_like_embeddings()
    truth_scores, truth_rows = ItemIndex.build(items, ids, "exact").search(users, K)
    return items, users, ids, truth_scores, truth_rows


@pytest.fixture(scope="module")
def built(data):
    items, _, ids, _, _ = data
    return {name: ItemIndex.build(items, ids, name, BUILD[name]) for name in ANN}


def test_exact_backend_matches_numpy(data):
    items, users, _, scores, rows = data
    full = users @ items.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-5)


@pytest.mark.parametrize("name", ANN)
def test_exhaustive_settings_equal_exact(name, data, built):
    items, users, _, truth_scores, truth_rows = data
    index = built[name]
    saved = dict(index.backend.search_params)
    index.backend.set_search_params(**EXHAUSTIVE[name])
    try:
        scores, rows = index.search(users, K, candidates=N_ITEMS if name == "faiss-ivfpq" else None)
    finally:
        index.backend.set_search_params(**saved)
    np.testing.assert_array_equal(rows, truth_rows)
    np.testing.assert_allclose(scores, truth_scores, rtol=1e-5)


def recall(rows, truth_rows):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(rows, truth_rows)])


@pytest.mark.parametrize("name", ANN)
def test_default_settings_meet_the_recall_floor(name, tower_like):
    users, truth_rows, indexes = tower_like
    scores, rows = indexes[name].search(users, K)
    assert recall(rows, truth_rows) >= RECALL_FLOOR[name]
    # Whatever is returned carries its exact score and comes best first.
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("name", ANN)
def test_more_search_effort_reaches_the_floor_on_harder_embeddings(name, data, built):
    """Unstructured embeddings (latent as large as the bias) need more probes than the defaults."""
    _, users, _, _, truth_rows = data
    index = built[name]
    saved = dict(index.backend.search_params)
    index.backend.set_search_params(**{"faiss-ivfpq": {"nprobe": 16}, "faiss-hnsw": {},
                                       "scann": {"leaves_to_search": 20}}[name])
    try:
        assert recall(index.search(users, K)[1], truth_rows) >= 0.9
    finally:
        index.backend.set_search_params(**saved)


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
        exact = np.einsum("qd,qcd->qc", users, items[np.maximum(candidates, 0)])
        exact[candidates < 0] = -np.inf
        best = np.take_along_axis(candidates, np.argsort(-exact, axis=1)[:, :K], axis=1)
        found.append(recall(best, truth_rows))
    backend.set_search_params(**saved)
    assert found == sorted(found) and found[0] < found[-1]


@pytest.mark.parametrize("name", installed_backends())
def test_saved_index_loads_back_identical(name, data, built, tmp_path):
    items, users, ids, _, _ = data
    index = built.get(name) or ItemIndex.build(items, ids, name)
    before = index.search(users, K)
    index.save(str(tmp_path / name), export_version=3)
    loaded = ItemIndex.load(str(tmp_path / name), items, ids, export_version=3)
    after = loaded.search(users, K)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert loaded.backend.build_params == index.backend.build_params


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


def test_unknown_backend_and_settings_are_refused(data):
    items, _, ids, _, _ = data
    with pytest.raises(ConfigError, match="unknown backend"):
        get_backend("annoy")
    with pytest.raises(ValueError, match="has no build setting 'nlsit'"):
        ItemIndex.build(items, ids, "faiss-ivfpq", {"nlsit": 5})
    assert set(BACKENDS) == {"faiss-ivfpq", "scann", "faiss-hnsw", "exact"}


def test_scann_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(scann_backend, "scann_ops_pybind", None)
    with pytest.raises(ConfigError, match=r'pip install "tte_tfrs\[scann\]"'):
        get_backend("scann")
