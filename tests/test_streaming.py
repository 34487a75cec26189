"""Data larger than memory: files read in chunks must give what the in-memory path gives."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import tiny_config

from tte_tfrs.data import streaming
from tte_tfrs.data.dataset import join_features
from tte_tfrs.data.loader import load_dataset
from tte_tfrs.data.split import split_ratings
from tte_tfrs.data.synthetic import SyntheticConfig, write_bookcrossing
from tte_tfrs.data.tfdata import preprocess_columns
from tte_tfrs.exports.writer import rated_items, users_of
from tte_tfrs.model.two_tower import RATING
from tte_tfrs.model.vocabulary import build_vocabularies
from tte_tfrs.training import scaled, streamed, trainer
from tte_tfrs.training.config import TrainConfig

# As in tests/test_distributed.py: the same arithmetic on other batches (fixed when the shards are
# written, in another order); the batch order alone moves this RMSE by up to 0.027.
RMSE_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def bx_data(tmp_path_factory):
    """The original BX layout: ';'-separated latin-1 with backslash escapes."""
    folder = tmp_path_factory.mktemp("bx")
    write_bookcrossing(str(folder), SyntheticConfig(n_users=300, n_items=200, n_interactions=4000,
                                                    seed=3), layout="bx")
    return str(folder)


@pytest.mark.parametrize("layout", ["kaggle", "bx"])
def test_chunked_reading_reports_counts_and_splits_as_in_memory(layout, tiny_data, bx_data):
    path = tiny_data[0] if layout == "kaggle" else bx_data
    whole = load_dataset(path)
    # Small chunks: the planted duplicates at the end of the file repeat pairs of the first chunk.
    data = streaming.read_streamed(path, chunk_rows=700)
    try:
        assert data.report.to_dict() == whole.report.to_dict()
        assert data.counts() == whole.counts()
        ratings = pd.concat(list(data.iter_ratings()), ignore_index=True)
        pd.testing.assert_frame_equal(ratings, whole.ratings)
        pd.testing.assert_frame_equal(data.users, whole.users)
        pd.testing.assert_frame_equal(data.items, whole.items)
        pd.testing.assert_frame_equal(data.catalogue(), whole.catalogue())

        labels = data.split(0.1, 0.1, False, 42)
        splits = split_ratings(whole, seed=42)
        usable = ratings[ratings["rating"] != 0].reset_index(drop=True)
        for code, name in enumerate(("train", "validation", "test")):
            pd.testing.assert_frame_equal(usable[labels == code].reset_index(drop=True),
                                          getattr(splits, name))

        class Result:       # what the writer reads for users.csv and rated.npz
            dataset, parent = whole, None

        item_ids = sorted(whole.catalogue()["item_id"])
        users, rated = data.export_users(item_ids)
        pd.testing.assert_frame_equal(users, users_of(Result).reset_index(drop=True))
        expected = rated_items(whole.ratings[["user_id", "item_id"]], item_ids)
        for key, value in expected.items():
            np.testing.assert_array_equal(rated[key], value)
    finally:
        data.close()
    assert not os.path.exists(data.work_dir)


def test_vocabularies_and_rows_written_are_the_in_memory_ones(tiny_data, tmp_path, monkeypatch):
    # Users and items are counted and preprocessed a few at a time: the slices must add up.
    monkeypatch.setattr(streamed, "SLICE_ROWS", 37)
    config = tiny_config(tiny_data[0])
    whole = load_dataset(tiny_data[0])
    splits = split_ratings(whole, seed=config.seed)
    train_columns = join_features(splits.train, whole)
    specs = whole.user_features + whole.item_features
    expected = build_vocabularies(specs, train_columns, config.min_count, config.max_text_tokens)

    data = streaming.read_streamed(tiny_data[0], chunk_rows=1000)
    try:
        labels = data.split(0.1, 0.1, False, config.seed)
        ratings, user_counts, item_counts = streamed.training_counts(data, labels, False)
        np.testing.assert_array_equal(ratings, train_columns[RATING])
        users, items = streamed.side_tables(data)
        vocabularies = streamed.streamed_vocabularies(data, users, items, user_counts, item_counts,
                                                      config.min_count, config.max_text_tokens)
        assert vocabularies == expected

        model = trainer.build_model(config, whole, train_columns, float(np.mean(ratings)),
                                    vocabularies)
        sharded = streamed.write_streamed(data, labels, False, model, users, items,
                                          str(tmp_path / "shards"), 64, config.seed)
    finally:
        data.close()
    # The test split is one shard, in file order: the blocks are the in-memory preprocessing.
    assert len(sharded.files["test"]) == 1
    blocks = list(streaming.read_blocks(sharded.files["test"], sharded.spec))
    written = tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *blocks)
    wanted = preprocess_columns(model.preprocess, join_features(splits.test, whole))
    for got, want in zip(tf.nest.flatten(written, expand_composites=True),
                         tf.nest.flatten(wanted, expand_composites=True)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    # Every training row is written once, in blocks of one batch, in a shuffled order.
    train = list(streaming.read_blocks(sharded.files["train"], sharded.spec))
    assert {streaming.block_rows(b) for b in train[:-1]} <= {64}
    written_ratings = np.concatenate([b[RATING].numpy() for b in train])
    assert sorted(written_ratings) == sorted(splits.train["rating"])
    assert not np.array_equal(written_ratings, splits.train["rating"].to_numpy())


def test_streaming_trains_and_exports_what_the_in_memory_path_exports(tiny_data, trained, exported,
                                                                      tmp_path, monkeypatch):
    from tte_tfrs.exports import writer
    from tte_tfrs.workflows import train_and_export
    monkeypatch.setattr(writer, "ID_SLICE", 29)         # ids checked and indexed a slice at a time
    config = tiny_config(tiny_data[0], input_mode="streaming", streaming_dir=str(tmp_path / "work"))
    result, streamed_export = train_and_export(config, str(tmp_path / "models"), log=lambda m: None)
    assert result.metrics["input"] == "streaming"
    assert abs(result.metrics["validation_rmse"] - trained.metrics["validation_rmse"]) < RMSE_TOLERANCE
    assert abs(result.metrics["test_rmse"] - trained.metrics["test_rmse"]) < RMSE_TOLERANCE
    assert result.metrics["baseline_rmse"] == pytest.approx(trained.metrics["baseline_rmse"])
    assert os.listdir(tmp_path / "work") == []          # chunks and shards removed

    ours, theirs = streamed_export.manifest, exported.manifest
    assert ours["dataset"]["report"] == theirs["dataset"]["report"]
    assert ours["dataset"]["counts"] == theirs["dataset"]["counts"]
    assert ours["dataset"]["splits"] == theirs["dataset"]["splits"]
    assert ours["checkpoint"] == theirs["checkpoint"]
    mine, other = streamed_export.output_dir, exported.output_dir
    for name in ("users/1/users.csv", "item_embeddings/1/items.csv", "item_embeddings/1/item_ids.txt",
                 "checkpoint/1/vocabularies.json"):
        with open(os.path.join(mine, name), "rb") as a, open(os.path.join(other, name), "rb") as b:
            assert a.read() == b.read(), name
    with np.load(os.path.join(mine, "users/1/rated.npz")) as a, \
            np.load(os.path.join(other, "users/1/rated.npz")) as b:
        for key in b.files:
            np.testing.assert_array_equal(a[key], b[key])


def test_in_memory_rows_written_for_workers_are_each_read_once(trained, tmp_path):
    model = trained.model
    columns = join_features(trained.splits.train, trained.dataset)
    tensors = {name: preprocess_columns(model.preprocess, columns) for name in
               ("train", "validation", "test")}
    sharded = streamed.write_tensors(tensors, str(tmp_path), 100, seed=1, workers=2)
    seen = []
    for worker in range(2):
        data = sharded.training(seed=1, worker=worker, workers=2)
        seen.append(np.concatenate([b[RATING].numpy() for b in data]))
    assert sorted(np.concatenate(seen)) == sorted(columns[RATING])
    assert all(len(s) for s in seen)


def test_auto_mode_streams_above_the_threshold(tiny_data):
    path = tiny_data[0]
    size_mb = os.path.getsize(os.path.join(path, "Ratings.csv")) / 1e6
    assert not scaled.wants_streaming(TrainConfig(data_dir=path))
    assert scaled.wants_streaming(TrainConfig(data_dir=path, streaming_threshold_mb=size_mb / 2))
    assert not scaled.wants_streaming(TrainConfig(data_dir=path, streaming_threshold_mb=0,
                                                  input_mode="memory"))
    assert scaled.wants_streaming(TrainConfig(data_dir=path, input_mode="streaming"))


def test_cluster_descriptions_that_cannot_work_are_refused_with_the_fix():
    from tte_tfrs.errors import ConfigError
    from tte_tfrs.training.distributed import read_role
    cases = {
        "": "needs the TF_CONFIG environment variable",
        "{not json": "is not a usable cluster description",
        json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}):
            "names task worker 3",
        json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:1"]},
                    "task": {"type": "worker", "index": 0}}): "may name only",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=message) as error:
            read_role("multi_worker", {"TF_CONFIG": text})
        assert error.value.field == "strategy"
    with pytest.raises(ConfigError, match="needs one chief"):
        read_role("parameter_server", {"TF_CONFIG": json.dumps(
            {"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}})})
    role = read_role("multi_worker", {"TF_CONFIG": json.dumps(
        {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}})})
    assert (role.num_workers, role.is_chief, role.trains) == (2, False, True)
