"""Feature standardisation, vocabularies and towers."""

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tte_tfrs.data import features
from tte_tfrs.data.dataset import join_features
from tte_tfrs.data.features import FeatureSpec
from tte_tfrs.model.towers import ITEM, USER, Tower, make_regularizer
from tte_tfrs.model.vocabulary import build_vocabularies


def strings(tensor):
    return [v.decode() for v in tensor.numpy()]


def test_location_parts_country_and_state():
    country, state = features.location_parts(tf.constant(
        ["nyc, new york, usa", "porto, v.n.gaia, portugal", "", "x, n/a, n/a", "berlin", " a , b ,"]))
    assert strings(country) == ["usa", "portugal", "", "", "berlin", ""]
    assert strings(state) == ["new york", "v.n.gaia", "", "", "", "b"]


def test_isbn_normalisation():
    out = features.normalize_id(tf.constant([" 0330299891", ",.0330486187", "0 00 612183 7",
                                             "034542252x", "0-19-515344-8"]), "isbn")
    assert strings(out) == ["0330299891", "0330486187", "0006121837", "034542252X", "0195153448"]


def test_sanitize_number_maps_invalid_to_missing():
    out = features.sanitize_number(tf.constant([0.0, 244.0, float("nan"), -3.0, 18.0, 100.0]),
                                   (4.0, 50.0, 100.0))
    assert out.numpy().tolist() == [0.0, 0.0, 0.0, 0.0, 18.0, 100.0]


def test_text_tokens():
    assert [t.decode() for t in features.text_tokens(tf.constant(["The Cat's Hat: A Story!"]))[0]
            .numpy()] == ["the", "cat", "hat", "a", "story"]


def test_vocabularies_do_not_depend_on_row_order():
    specs = (FeatureSpec("user_id", "id"), FeatureSpec("country", "category"),
             FeatureSpec("title", "text"))
    columns = {"user_id": np.array(["b", "a", "c", "a"], dtype=object),
               "country": np.array(["usa", "uk", "usa", ""], dtype=object),
               "title": np.array(["red fox", "blue fox", "fox", "red"], dtype=object)}
    first = build_vocabularies(specs, columns, min_count=2, max_text_tokens=10)
    reordered = {k: v[::-1] for k, v in columns.items()}
    assert build_vocabularies(specs, reordered, 2, 10) == first
    assert first["user_id"] == ["a", "b", "c"]          # ids need one rating; by count, then name
    assert first["country"] == ["usa"]                  # 'uk' is rarer than min_count; '' never
    assert first["title"] == ["fox", "red"]


def build_towers(dataset, latent_dim=4, gamma=1e-3, hidden=(), scope="table"):
    columns = join_features(dataset.ratings.head(3000), dataset)
    vocab = build_vocabularies(dataset.user_features + dataset.item_features, columns, 2, 1000)
    reg = make_regularizer("l2", gamma)
    user = Tower(dataset.user_features, vocab, latent_dim, USER, reg, hidden, global_mean=7.5,
                 regularization_scope=scope)
    item = Tower(dataset.item_features, vocab, latent_dim, ITEM, reg, hidden,
                 regularization_scope=scope)
    return user, item, columns


def test_towers_fold_biases_into_the_embedding(tiny_data):
    import tte_tfrs
    dataset = tte_tfrs.load_dataset(tiny_data[0])
    user, item, columns = build_towers(dataset)
    batch = {k: tf.constant(v[:16]) for k, v in columns.items()}
    u, v = user(batch).numpy(), item(batch).numpy()
    assert u.shape == v.shape == (16, 6)
    np.testing.assert_array_equal(u[:, -1], np.ones(16))      # user: [latent, b_u + mu, 1]
    np.testing.assert_array_equal(v[:, -2], np.ones(16))      # item: [latent, 1, b_i]
    assert abs(float(np.mean(u[:, -2])) - 7.5) < 0.5          # the global mean sits in the user bias


def test_unseen_ids_and_missing_features_still_embed(tiny_data):
    import tte_tfrs
    dataset = tte_tfrs.load_dataset(tiny_data[0])
    user, item, _ = build_towers(dataset, hidden=(8,))
    new_user = {"user_id": tf.constant(["never-seen", ""]), "location": tf.constant(["", "x, y, z"]),
                "age": tf.constant([float("nan"), 500.0])}
    new_item = {"item_id": tf.constant(["NEW"]), "title": tf.constant([""]),
                "author": tf.constant([""]), "publisher": tf.constant([""]),
                "year": tf.constant([0.0])}
    assert np.all(np.isfinite(user(new_user).numpy()))
    assert np.all(np.isfinite(item(new_item).numpy()))


@pytest.mark.parametrize("scope", ["table", "batch"])
def test_every_table_is_regularized(tiny_data, scope):
    import tte_tfrs
    dataset = tte_tfrs.load_dataset(tiny_data[0])
    user, item, columns = build_towers(dataset, hidden=(8,), scope=scope)
    batch = {k: tf.constant(v[:4]) for k, v in columns.items()}
    for tower in (user, item):
        with tf.GradientTape() as tape:
            _, penalty = tower.embed_with_penalty(tower.preprocess(batch))
            regularization = penalty + tf.add_n(tower.losses)
        weights = [w for w in tower.trainable_weights if "embedding" in w.name or "kernel" in w.name]
        gradients = tape.gradient(regularization, weights)
        assert weights and all(g is not None for g in gradients), [
            w.name for w, g in zip(weights, gradients) if g is None]
        # Table scope regularises whole tables through Keras; batch scope only the rows looked up.
        tables = [w for w in weights if "embedding" in w.name]
        assert (float(penalty) > 0) == (scope == "batch")
        assert len(tower.losses) == (len(weights) if scope == "table" else len(weights) - len(tables))


def test_join_features_fills_unknowns(tiny_data):
    import tte_tfrs
    dataset = tte_tfrs.load_dataset(tiny_data[0])
    ratings = pd.DataFrame({"user_id": ["no-such-user"], "item_id": ["NO-SUCH-ITEM"],
                            "rating": [5.0], "line": [1]})
    columns = join_features(ratings, dataset)
    assert columns["location"][0] == "" and np.isnan(columns["age"][0])
    assert columns["title"][0] == "" and columns["rating"][0] == 5.0


HOSTILE_IDS = [" 3379 ", "\t3379\n", "3379\xa0", "\u30003379", "0-19-515344-8", "034542252x",
               "ß0195", "ÿ12", "\v12\f", "  ", "", "abc def", "ｘ12", "İ1", "12\r"]


@pytest.mark.parametrize("how", ["", "isbn"])
def test_the_python_id_normalisation_is_the_graphs(how):
    from tte_tfrs import ids
    graph = strings(features.normalize_id(tf.constant(HOSTILE_IDS), how))
    assert [ids.canonical_id(v, how) for v in HOSTILE_IDS] == graph
    assert ids.canonical_ids(HOSTILE_IDS, how).tolist() == graph


def test_unicode_text_is_tokenised_the_same_in_training_and_serving():
    title = "Café Müller's Straße — l’été, ΑΘΗΝΑ 2"
    tokens = [t.decode() for t in features.text_tokens(tf.constant([title]))[0].numpy()]
    assert tokens == ["café", "müller", "straße", "l", "été", "αθηνα", "2"]
    spec = FeatureSpec("title", "text")
    vocabulary = build_vocabularies((spec,), {"title": np.array([title, title], dtype=object)}, 2,
                                    100)["title"]
    assert sorted(vocabulary) == sorted(tokens)
    tower = Tower((spec,), {"title": vocabulary}, 4, ITEM)
    serving = tower.encoders[0].preprocess(tf.constant([title, "CAFÉ MÜLLER", "caf m ller"]))
    assert 0 not in serving[0].numpy()                        # every word has its own row
    assert serving[1].numpy().tolist() == serving[0].numpy()[:2].tolist()
    assert serving[2].numpy().tolist() == [0, 0, 0]           # the ASCII mangling is unknown
    bad_bytes = features.text_tokens(tf.constant([b"caf\xe9 \xff"]))           # not UTF-8
    assert len(bad_bytes[0]) == 1


def test_an_empty_vocabulary_maps_everything_to_the_unknown_row():
    spec = FeatureSpec("location", "location")
    tower = Tower((FeatureSpec("user_id", "id"), spec), {"user_id": ["1"]}, 4, USER)
    out = tower({"user_id": tf.constant(["1", "2"]), "location": tf.constant(["a, b, c", ""])})
    assert out.shape == (2, 6)
    assert tower.vocabularies()["location/country"] == []


def test_a_vocabulary_a_file_cannot_hold_stays_in_memory_with_the_same_rows(tmp_path):
    from tte_tfrs.model.towers import make_lookup, write_vocabulary_file
    values = ["b", "a", "Ünï cödé"]
    path = str(tmp_path / "v.txt")
    assert write_vocabulary_file(values, path)
    from_file = make_lookup(values, "ok", str(tmp_path / "ok.txt"))
    assert from_file.input_vocabulary == str(tmp_path / "ok.txt")
    broken = ["b", "a\nc", "d\r"]
    for values_a_file_cannot_hold in (["b", "a\nc"], ["b", "d\r"], ["b", "\ud800"]):
        assert not write_vocabulary_file(values_a_file_cannot_hold, str(tmp_path / "broken.txt"))
    in_memory = make_lookup(broken, "broken", str(tmp_path / "broken.txt"))
    assert not (tmp_path / "broken.txt").exists()
    assert from_file(tf.constant(values + ["x"])).numpy().tolist() == [1, 2, 3, 0]
    assert in_memory(tf.constant(broken + ["a"])).numpy().tolist() == [1, 2, 3, 0]


def test_vocabulary_folders_nobody_holds_are_deleted_and_held_ones_kept(tmp_path, monkeypatch):
    import os
    import tempfile
    import time

    import filelock

    from tte_tfrs.model.towers import OWNER_LOCK, VOCABULARY_FOLDER
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old = time.time() - 3600
    for name in ("abandoned", "held", "new"):            # new: its lock file was just created
        folder = tmp_path / f"{VOCABULARY_FOLDER}user-{name}"
        folder.mkdir()
        (folder / "user.user_id.txt").write_text("1\n")
        (folder / OWNER_LOCK).touch()
        if name != "new":
            os.utime(folder / OWNER_LOCK, (old, old))
    # A live owner holds its lock (another open file: flock counts it as another holder).
    held = filelock.FileLock(str(tmp_path / f"{VOCABULARY_FOLDER}user-held" / OWNER_LOCK))
    held.acquire()
    try:
        tower = Tower((FeatureSpec("user_id", "id"),), {"user_id": ["1", "2"]}, 4, USER,
                      vocabulary_files=True)
    finally:
        held.release()
    names = sorted(os.listdir(tmp_path))
    assert f"{VOCABULARY_FOLDER}user-abandoned" not in names
    assert f"{VOCABULARY_FOLDER}user-held" in names and f"{VOCABULARY_FOLDER}user-new" in names
    mine = [n for n in names if n not in (f"{VOCABULARY_FOLDER}user-held",
                                          f"{VOCABULARY_FOLDER}user-new")]
    assert len(mine) == 1
    # The tower's own folder is held while the tower lives, and goes with it.
    probe = filelock.FileLock(str(tmp_path / mine[0] / OWNER_LOCK), timeout=0)
    with pytest.raises(filelock.Timeout):
        probe.acquire()
    assert tower.vocabularies()["user_id"] == ["1", "2"]
    del tower
    import gc
    gc.collect()
    assert not (tmp_path / mine[0]).exists()
