"""Warm starts: vocabularies grow with old rows kept, the next version is written, indexes are
refreshed, and inputs that would poison the model are refused before anything changes."""

import dataclasses
import json
import os

import numpy as np
import pytest
from conftest import tiny_config

from tte_tfrs.data.cleaning import OUT_OF_SCALE
from tte_tfrs.data.loader import load_dataset
from tte_tfrs.data.report import DataReport
from tte_tfrs.errors import ConfigError, DataError
from tte_tfrs.exports.layout import MANIFEST
from tte_tfrs.exports.reader import ExportReader
from tte_tfrs.exports.writer import export
from tte_tfrs.retrieval.building import build_index
from tte_tfrs.retrieval.faiss_backends import IvfPqBackend
from tte_tfrs.retrieval.item_index import ItemIndex
from tte_tfrs.scripts import train as train_script
from tte_tfrs.serving.recommender import Recommender
from tte_tfrs.training import checkpoint
from tte_tfrs.training import trainer as training
from tte_tfrs.training.warm_start import (
    Parent,
    UpdateRefusedError,
    check_update,
    warm_start,
    with_parent_tables,
)
from tte_tfrs.workflows import update_and_export


@pytest.fixture(scope="module")
def old_and_new(tiny_data):
    """The tiny data cut in two: every fifth user's ratings arrive later, as an update."""
    dataset = load_dataset(tiny_data[0])
    dataset = dataclasses.replace(dataset, report=DataReport())     # the planted mess is not news
    ratings = dataset.ratings
    users = sorted(ratings["user_id"].unique())
    late = ratings["user_id"].isin(set(users[::5]))
    old = dataclasses.replace(dataset, ratings=ratings[~late].reset_index(drop=True))
    new = dataclasses.replace(dataset, ratings=ratings[late].reset_index(drop=True))
    return old, new


@pytest.fixture(scope="module")
def parent(old_and_new, tiny_data, tmp_path_factory):
    """An export of a model trained on the old part, with a saved index; returns its folder."""
    out = os.path.join(str(tmp_path_factory.mktemp("warm")), "models")
    export(training.train(tiny_config(tiny_data[0]), old_and_new[0]), out)
    build_index(out, "exact")
    return out


@pytest.fixture(scope="module")
def updated(parent, old_and_new, tmp_path_factory):
    """A copy of the parent export, updated with the new part."""
    import shutil
    out = os.path.join(str(tmp_path_factory.mktemp("updated")), "models")
    shutil.copytree(parent, out)
    before = json.load(open(os.path.join(out, MANIFEST)))
    result, exported, indexes = update_and_export(out, dataset=old_and_new[1], epochs=4,
                                                  log=lambda _: None)
    return out, before, result, exported, indexes


def test_grown_tables_keep_old_rows_bit_for_bit(parent, old_and_new):
    state = ExportReader(parent).checkpoint()
    old_vocabularies, weights = state.vocabularies, state.weights
    grown, growth = checkpoint.grow_vocabularies(
        old_vocabularies, {"user_id": ["new-a", old_vocabularies["user_id"][0], "new-b"]})
    assert growth["user_id"] == [len(old_vocabularies["user_id"]),
                                 len(old_vocabularies["user_id"]) + 2]
    assert grown["user_id"][: len(old_vocabularies["user_id"])] == old_vocabularies["user_id"]
    assert grown["user_id"][-2:] == ["new-a", "new-b"]

    dataset = old_and_new[0]
    columns = training.join_features(dataset.ratings[:2], dataset)
    config = tiny_config("unused")
    model = training.build_model(config, dataset, columns, 7.0, grown)
    training.predict(model, columns)
    fresh = checkpoint.model_weights(model)               # the grown model's own initialisation
    checkpoint.restore_grown(model, weights)
    restored = checkpoint.model_weights(model)
    for key, old in weights.items():
        kept = restored[key][: len(old)] if old.ndim else restored[key]
        np.testing.assert_array_equal(kept, old)                     # exact, not approximately
    table = restored["user/user_id_embedding/embeddings:0"]
    old_table = weights["user/user_id_embedding/embeddings:0"]
    assert table.shape[0] == old_table.shape[0] + 2
    # A new row starts at the old unknown-id row plus its own fresh initialisation, exactly.
    key = "user/user_id_embedding/embeddings:0"
    np.testing.assert_array_equal(table[-2:], old_table[0] + fresh[key][-2:])
    assert not np.allclose(table[-1], table[-2])          # so new rows start apart

    # Adagrad continues: old rows keep their accumulated squared gradients, new rows start fresh.
    accumulators = state.optimizer_state
    key = "user/user_id_embedding/embeddings:0"
    assert accumulators[key].shape == old_table.shape and accumulators[key].max() > 0.1001
    model.compile(optimizer=training.make_optimizer(config))
    assert checkpoint.restore_optimizer(model, accumulators)
    slot = dict((k, s.numpy()) for k, _, s in checkpoint._accumulators(model))[key]
    np.testing.assert_array_equal(slot[: len(old_table)], accumulators[key])
    np.testing.assert_array_equal(slot[len(old_table):],
                                  np.float32(model.optimizer.initial_accumulator_value))

    smaller = training.build_model(config, dataset, columns, 7.0,
                                   {**grown, "user_id": grown["user_id"][:3]})
    training.predict(smaller, columns)
    with pytest.raises(ValueError, match="shape"):
        checkpoint.restore_grown(smaller, weights)


def test_update_writes_the_next_version_with_parent_and_metrics(updated, old_and_new):
    out, before, result, exported, _ = updated
    manifest = json.load(open(os.path.join(out, MANIFEST)))
    assert exported.version == manifest["version"] == before["version"] + 1
    assert manifest["parent_version"] == before["version"]
    assert os.path.isdir(os.path.join(out, "user_tower", str(exported.version)))
    assert os.path.isdir(os.path.join(out, "user_tower", str(before["version"])))  # kept
    assert manifest["checkpoint"]["files"] == ["vocabularies.json", "weights.npz", "optimizer.npz"]
    assert sorted(os.listdir(os.path.join(out, manifest["checkpoint"]["path"]))) == sorted(
        manifest["checkpoint"]["files"])
    update = manifest["update"]
    new_users = set(old_and_new[1].ratings["user_id"])
    assert update["data_added"]["new_users"] == len(new_users)
    assert update["data_added"]["ratings"] == len(old_and_new[1].ratings)
    old_size, new_size = update["vocabulary_growth"]["user_id"]
    assert new_size - old_size == len(new_users & set(result.splits.train["user_id"]))
    # The parent knew nothing of the new users: the update must have learned them.
    assert (update["metrics_after"]["validation_rmse"]
            < update["metrics_before"]["validation_rmse"] - 0.05)
    # Nothing old is lost: the whole catalogue, the old users and their interactions remain.
    assert manifest["item_embeddings"]["count"] >= before["item_embeddings"]["count"]
    recommender = Recommender.load(out, backend="exact", build_if_missing=False)
    old_user = old_and_new[0].ratings["user_id"].iloc[0]
    new_user = sorted(new_users)[0]
    assert recommender.has_user(old_user) and recommender.has_user(new_user)
    rated_before = len(old_and_new[0].ratings.query("user_id == @old_user"))
    assert len(recommender.rated_rows(old_user)) == rated_before
    assert len(recommender.recommend(user_id=new_user, k=3)) == 3


def test_update_refreshes_the_parents_indexes(updated):
    out, before, _, exported, indexes = updated
    assert set(indexes) == set(before["indexes"]) == {"exact"}
    manifest = json.load(open(os.path.join(out, MANIFEST)))
    assert "rebuilt" in manifest["indexes"]["exact"]["refresh"]
    assert os.path.isdir(os.path.join(out, "index", "exact", str(exported.version)))


def test_ivfpq_keeps_its_codebooks_for_small_drift_and_rebuilds_stale_ones():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(30, 10))                              # clustered, like towers'
    items = (centres[rng.integers(0, 30, 3000)] + rng.normal(scale=0.2, size=(3000, 10)))
    items = items.astype(np.float32)
    ids = np.array([f"{n:05d}" for n in range(len(items))])
    index = ItemIndex.build(items, ids, "faiss-ivfpq", build_params={"nlist": 16, "nbits": 4})
    assert isinstance(index.backend, IvfPqBackend)

    drifted = np.vstack([items * 0.98 + rng.normal(scale=0.01, size=items.shape),
                         rng.normal(size=(100, 10)) * 0.9]).astype(np.float32)
    more_ids = np.concatenate([ids, [f"n{n}" for n in range(100)]])
    kept, how = index.refreshed(drifted, more_ids, "faiss-ivfpq")
    assert "kept the trained clusters" in how and kept.backend.index.ntotal == len(drifted)
    exact = ItemIndex.build(drifted, more_ids, "exact")
    queries = rng.normal(size=(20, 10)).astype(np.float32)
    np.testing.assert_array_equal(kept.search(queries, 5, candidates=400)[1],
                                  exact.search(queries, 5)[1])

    rotation = np.linalg.qr(rng.normal(size=(10, 10)))[0]       # same lengths, new directions
    stale = (items @ rotation).astype(np.float32)
    rebuilt, how = index.refreshed(stale, ids, "faiss-ivfpq")
    assert "rebuilt" in how and "stale" in how
    assert rebuilt.backend.build_params["nbits"] == 4            # the index's own settings kept
    longer, how = index.refreshed(items * 1.5, ids, "faiss-ivfpq")
    assert "longer" in how and "rebuilt" in how


def _unchanged(out, manifest_bytes):
    assert open(os.path.join(out, MANIFEST), "rb").read() == manifest_bytes
    assert sorted(os.listdir(os.path.join(out, "user_tower"))) == ["1"]


def other_scale_folder(tmp_path):
    """Ratings on a 1-100 scale: nearly all outside Book-Crossing's 0-10."""
    folder = tmp_path / "other-scale"
    folder.mkdir()
    (folder / "Ratings.csv").write_text("User-ID,ISBN,Book-Rating\n" + "".join(
        f"{n % 7 + 1},{n % 11:010d},{n % 90 + 11}\n" for n in range(200)))
    return str(folder)


def test_poisoning_inputs_are_refused_before_anything_changes(parent, old_and_new, tmp_path):
    manifest_bytes = open(os.path.join(parent, MANIFEST), "rb").read()
    new = old_and_new[1]
    with pytest.raises(DataError, match=r"Ratings.csv, line 2: 200 of its 200 rows .* outside "
                                        r"the rating scale .*--max_dropped_fraction"):
        warm_start(parent, data_dir=other_scale_folder(tmp_path))
    _unchanged(parent, manifest_bytes)

    fewer = dataclasses.replace(new, user_features=new.user_features[:-1])
    with pytest.raises(UpdateRefusedError, match="user features .* differ"):
        warm_start(parent, dataset=fewer)
    _unchanged(parent, manifest_bytes)

    # Same names, another kind: age read as a category instead of a bucketised number.
    recast = tuple(dataclasses.replace(s, kind="category", boundaries=()) if s.name == "age" else s
                   for s in new.user_features)
    with pytest.raises(UpdateRefusedError, match="age: category.* differ .*age: number"):
        warm_start(parent, dataset=dataclasses.replace(new, user_features=recast))
    _unchanged(parent, manifest_bytes)

    shrunk = dataclasses.replace(new, items=new.items.iloc[: len(new.items) // 10])
    with pytest.raises(UpdateRefusedError, match="lists only 10% of the"):
        warm_start(parent, dataset=shrunk)
    _unchanged(parent, manifest_bytes)

    scale = dataclasses.replace(new, rating_scale=(1.0, 5.0))
    with pytest.raises(UpdateRefusedError, match="scale"):
        warm_start(parent, dataset=scale)
    with pytest.raises(ConfigError, match="keeps the parent's embedding_dim"):
        warm_start(parent, dataset=new, embedding_dim=32)
    _unchanged(parent, manifest_bytes)


def test_train_script_refuses_a_poisoning_update_with_a_message(parent, tmp_path, capsys):
    manifest_bytes = open(os.path.join(parent, MANIFEST), "rb").read()
    assert train_script.run(["tte-train", f"--warm_start_from={parent}",
                             f"--data_dir={other_scale_folder(tmp_path)}", "--verbose=0"]) == 2
    error = capsys.readouterr().err
    assert "outside the rating scale 0-10" in error and "--max_dropped_fraction" in error
    _unchanged(parent, manifest_bytes)


def test_one_policy_for_out_of_scale_rows_and_ratings_only_updates_take_the_parents_tables(
        parent, old_and_new, tiny_data):
    # The embedded-style data has a few ratings outside the scale: a first training drops and
    # counts them, and so does an update (no refusal: one policy for both).
    dataset = load_dataset(tiny_data[0])
    assert any(OUT_OF_SCALE in reason for f in dataset.report.files for reason in f.dropped)
    loaded = Parent.load(parent)
    check_update(loaded, with_parent_tables(loaded, dataset))
    # New ratings only (no books file) continue a parent that had one: the parent's item schema
    # and table are used, so nothing is refused and known books keep their features.
    new = old_and_new[1]
    ratings_only = dataclasses.replace(new, items=new.items.iloc[:0][["item_id"]],
                                       item_features=new.item_features[:1])
    with pytest.raises(UpdateRefusedError, match="item features .* differ"):
        check_update(loaded, ratings_only)
    adopted = with_parent_tables(loaded, ratings_only)
    check_update(loaded, adopted)
    assert [s.name for s in adopted.item_features] == [s.name for s in new.item_features]
    assert len(adopted.items) == len(loaded.items) and "title" in adopted.items


def test_variables_are_saved_a_slice_at_a_time_as_np_savez_saves_them(tmp_path, monkeypatch):
    import tensorflow as tf

    from tte_tfrs.training import checkpoint
    monkeypatch.setattr(checkpoint, "SLICE_BYTES", 64)         # 3 rows of 5 floats a slice
    values = {"user/table/embeddings": np.arange(50, dtype=np.float32).reshape(10, 5) / 7,
              "user/global_mean": np.float32(3.5), "item/empty": np.zeros((0, 5), np.float32),
              "item/kernel": np.ones((2, 3, 4), np.float32)}
    checkpoint.save_variables(str(tmp_path / "w.npz"), {k: tf.Variable(v) for k, v in
                                                         values.items()})
    np.savez(tmp_path / "expected.npz", **values)
    with np.load(tmp_path / "w.npz") as saved, np.load(tmp_path / "expected.npz") as expected:
        assert saved.files == expected.files
        for key in expected.files:
            assert saved[key].dtype == expected[key].dtype
            np.testing.assert_array_equal(saved[key], expected[key])
