"""Calibration: the cheapest search setting reaching a target recall, measured on held-out queries;
queries for exports with few users; the record in the index and the manifest; tte-index's flags."""

import json
import os

import numpy as np
import pytest

from tte_tfrs.errors import ConfigError
from tte_tfrs.exports.layout import MANIFEST
from tte_tfrs.retrieval import ItemIndex, installed_backends
from tte_tfrs.retrieval.calibration import (
    CalibrationConfig,
    calibrate,
    exact_truth,
    measure,
    queries_from_users,
)
from tte_tfrs.retrieval.synthetic import TowerShape, item_ids, tower_shaped_items, tower_shaped_users
from tte_tfrs.scripts import index as index_script

# A catalogue harder than Book-Crossing's: item lengths spread over two orders of magnitude
# (log-normal, sigma 1), no common user direction. The search settings that were fixed defaults
# before calibration lose recall on it (IVF-PQ 0.93, ScaNN 0.84, HNSW with M = 8 below 0.95).
HARD = TowerShape(log_length_std=1.0, length_tail=0.0, bias_per_length=0.0, popularity_lean=0.0,
                  user_common_length=0.0, duplicate_share=0.0, clusters=12)
N_ITEMS, K = 20000, 10


@pytest.fixture(scope="module")
def catalogue():
    items = tower_shaped_items(N_ITEMS, HARD, seed=0)
    calibration_queries = tower_shaped_users(400, HARD, seed=1)
    held_out = tower_shaped_users(400, HARD, seed=2)
    return items, item_ids(N_ITEMS), calibration_queries, held_out, exact_truth(items, held_out, K)


def held_out_recall(index, queries, truth):
    return measure(index, queries, truth, K).recall


def old_defaults(index):
    """The fixed search settings used before calibration (nlist / 32 probes; a tenth of the leaves
    with ScaNN's build-time reorder depth; a beam of 128), with 10 k candidates re-ranked."""
    p = index.backend.build_params
    if index.name == "faiss-ivfpq":
        return {"nprobe": min(p["nlist"], max(16, p["nlist"] // 32))}
    if index.name == "faiss-hnsw":
        return {"ef_search": 128}
    return {"leaves_to_search": min(p["num_leaves"], max(8, p["num_leaves"] // 10)),
            "pre_reorder_num_neighbors": 0}


@pytest.mark.parametrize("backend, build", [("faiss-ivfpq", {}), ("scann", {}),
                                            ("faiss-hnsw", {"m": 8, "ef_construction": 100})])
def test_calibrated_settings_reach_the_target_where_old_defaults_did_not(backend, build, catalogue):
    if backend not in installed_backends():
        pytest.skip(f"{backend} not installed")
    items, ids, queries, held_out, truth = catalogue
    index = ItemIndex.build(items, ids, backend, build)
    assert index.name == backend                                    # the ANN index, not exact
    index.backend.set_search_params(**old_defaults(index))
    before = held_out_recall(index, held_out, truth)
    record = calibrate(index, queries, CalibrationConfig(target_recall=0.95, k=K))
    after = held_out_recall(index, held_out, truth)
    assert before < 0.95 <= after, (before, after, record)
    assert record["reached"] and record["recall_lower_bound"] >= 0.95
    assert record["search_params"] == index.backend.search_params
    assert record["rerank"] == index.rerank and record["single_query_p50_ms"] > 0
    # The cheapest on its ladder: the rung just below the chosen one misses the target.
    def full(rungs):
        return [({**index.backend.search_params, **params}, rerank) for params, rerank in rungs]
    chosen = (record["search_params"], record["rerank"])
    ladder = next(full(rungs) for rungs in index.backend.calibration_ladders(K)
                  if chosen in full(rungs))
    position = ladder.index(chosen)
    if position > 0:
        cheaper = measure(index, queries, exact_truth(items, queries, K), K, *ladder[position - 1])
        assert cheaper.lower_bound < 0.95


def test_unreachable_target_says_so_and_keeps_the_most_accurate(catalogue):
    items, ids, queries, _, _ = catalogue
    index = ItemIndex.build(items, ids, "faiss-ivfpq", {"nbits": 6})
    index.backend.calibration_ladders = lambda k: [[({"nprobe": 1}, 1), ({"nprobe": 2}, 1)]]
    record = calibrate(index, queries, CalibrationConfig(target_recall=0.999, k=K))
    assert not record["reached"] and "no setting reached" in record["message"]
    assert index.backend.search_params["nprobe"] == 2 and index.rerank == 1
    assert record["recall"] == max(m["recall"] for m in record["measured"])


def test_user_settings_are_kept_and_measured(catalogue):
    items, ids, queries, _, _ = catalogue
    index = ItemIndex.build(items, ids, "faiss-ivfpq", {"nbits": 6})
    record = calibrate(index, queries, CalibrationConfig(), fixed={"nprobe": 5}, fixed_rerank=4)
    assert index.backend.search_params["nprobe"] == 5 and index.rerank == 4
    assert record["fixed"] == {"search_params": {"nprobe": 5}, "rerank": 4}
    assert len(record["measured"]) == 1 and 0 < record["recall"] <= 1


def test_few_users_are_topped_up_with_queries_shaped_like_them():
    users = tower_shaped_users(5, seed=4)
    queries, sources = queries_from_users(users, 1000)
    assert sources == {"users": 5, "synthetic": 995} and len(queries) == 1000
    assert set(map(tuple, users)) <= set(map(tuple, queries))
    assert np.all(queries[:, -1] == 1.0)                    # the constant column stays constant
    assert abs(queries[:, -2].mean() - users[:, -2].mean()) < 3 * users[:, -2].std() + 1e-6
    many, sources = queries_from_users(tower_shaped_users(2000), 1000)
    assert sources == {"users": 1000, "synthetic": 0} and len(many) == 1000
    one, sources = queries_from_users(users[:1], 50)
    assert sources == {"users": 1, "synthetic": 299} and np.isfinite(one).all()


@pytest.mark.parametrize("values, field", [
    ({"target_recall": 0.0}, "target_recall"), ({"target_recall": 1.5}, "target_recall"),
    ({"k": 0}, "calibration_k"), ({"queries": 3}, "calibration_queries")])
def test_calibration_settings_are_checked(values, field):
    with pytest.raises(ConfigError) as caught:
        CalibrationConfig(**values)
    assert caught.value.field == field


def test_build_index_calibrates_on_the_exports_users_and_records_it(exported, capsys):
    code = index_script.run(["tte-index", f"--output_dir={exported.output_dir}",
                             "--backend=faiss-hnsw", "--calibration_queries=50"])
    assert code == 0
    out = capsys.readouterr().out
    assert "calibration: target recall@10 0.95 reached on 50 user queries" in out
    manifest = json.load(open(os.path.join(exported.output_dir, MANIFEST)))
    record = manifest["indexes"]["faiss-hnsw"]["calibration"]
    assert record["queries"]["users"] == 50 and record["reached"] and record["recall"] >= 0.95
    assert manifest["indexes"]["faiss-hnsw"]["search_params"] == record["search_params"]


@pytest.mark.parametrize("flags, named", [
    (["--backend=faiss-hnsw", "--hnsw_m=1"], "--hnsw_m"),
    (["--backend=faiss-hnsw", "--hnsw_m=0"], "--hnsw_m"),
    (["--backend=scann", "--num_leaves=0"], "--num_leaves"),
    (["--backend=faiss-ivfpq", "--nbits=40"], "--nbits"),
    (["--backend=faiss-hnsw", "--nprobe=3"], "--nprobe"),
    (["--target_recall=2"], "--target_recall"),
    (["--backend=milvus", "--milvus_uri=ftp://x"], "--milvus_uri")])
def test_bad_index_flags_are_named_before_anything_is_read(flags, named, tmp_path, capsys):
    code = index_script.run(["tte-index", f"--output_dir={tmp_path / 'none'}", *flags])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"tte-index: error: {named}: ")


def test_auto_keeps_the_fastest_backend_reaching_the_target(exported, capsys):
    code = index_script.run(["tte-index", f"--output_dir={exported.output_dir}", "--backend=auto",
                             "--calibration_queries=50"])
    assert code == 0
    manifest = json.load(open(os.path.join(exported.output_dir, MANIFEST)))
    chosen = [name for name, meta in manifest["indexes"].items() if "auto" in meta]
    assert len(chosen) == 1
    compared = manifest["indexes"][chosen[0]]["auto"]["compared"]
    assert set(compared) >= {"faiss-ivfpq", "faiss-hnsw", "exact"}
    reaching = {name: r["single_query_p50_ms"] for name, r in compared.items() if r.get("reached")}
    assert chosen[0] == min(reaching, key=reaching.get)
    assert "skipped" in compared["faiss-ivfpq"]            # too few items for a trained index
    assert f"tte-recommend --backend={chosen[0]}" in capsys.readouterr().out
