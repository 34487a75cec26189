"""The user-history feature and the joint (rating + retrieval) objective."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tte_tfrs.data.dataset import join_features
from tte_tfrs.data.tfdata import make_training_dataset
from tte_tfrs.errors import ConfigError
from tte_tfrs.model.history import HISTORY, ITEM_HISTORY
from tte_tfrs.training import trainer


def _pairs(frame):
    return set(zip(frame["user_id"].astype(str), frame["item_id"].astype(str)))


@pytest.mark.parametrize("feature,owner,other", [(HISTORY, "user_id", "item_id"),
                                                  (ITEM_HISTORY, "item_id", "user_id")])
def test_histories_hold_training_and_implicit_pairs_only_capped(trained, feature, owner, other):
    """Each user's items (user history) and each item's users (item history): every training
    and implicit pair, no held-out pair, capped at history_size by a sample of the key's own."""
    dataset, splits = trained.dataset, trained.splits
    both = dict(user_history=True, item_history=True)
    capped = trainer.histories_for(tiny_config(trained.config.data_dir, history_size=3, **both),
                                   dataset, splits)[feature]
    whole = trainer.histories_for(tiny_config(trained.config.data_dir, history_size=10 ** 6,
                                              **both), dataset, splits)[feature]

    def pairs(frame):
        return set(zip(frame[owner].astype(str), frame[other].astype(str)))
    held = pairs(splits.validation) | pairs(splits.test)
    implicit = pairs(dataset.ratings[~dataset.explicit_mask()])
    allowed = pairs(splits.train) | implicit
    stored = {(key, whole.vocabulary[row - 1]) for key, rows in zip(whole.keys, whole.rows)
              for row in rows}
    assert stored == allowed and not stored & held         # every training pair, none held out
    assert implicit and implicit <= stored                 # implicit interactions are included
    assert max(len(r) for r in capped.rows) == 3 < max(len(r) for r in whole.rows)
    by_key = dict(zip(whole.keys, whole.rows))
    for key, rows in zip(capped.keys, capped.rows):        # a sample of the key's own
        assert set(rows) <= set(by_key[key])
    only_user = trainer.histories_for(tiny_config(trained.config.data_dir, user_history=True),
                                      dataset, splits)
    assert set(only_user) == {HISTORY}                     # only what the config asks for


def _history_model(trained, **overrides):
    config = tiny_config(trained.config.data_dir, **{"user_history": True, **overrides})
    columns = join_features(trained.splits.train, trained.dataset)
    histories = trainer.histories_for(config, trained.dataset, trained.splits)
    return trainer.build_model(config, trained.dataset, columns, 7.0, histories=histories), \
        histories, columns


def test_history_feature_is_looked_up_by_user_id(trained):
    model, histories, _ = _history_model(trained)
    histories = histories[HISTORY]
    tower = model.user_tower
    encoder = tower.encoders[-1]
    user = histories.keys[int(np.argmax([len(r) for r in histories.rows]))]
    got = encoder(tf.constant([user, "never-seen-user"])).numpy()
    table = encoder.embedding.embeddings.numpy()
    rows = histories.rows[histories.keys.index(user)]
    np.testing.assert_allclose(got[0], table[rows].sum(0) / np.sqrt(len(rows)), rtol=1e-5)
    np.testing.assert_array_equal(got[1], 0)               # a new user: no history
    assert tower.vocabularies()[HISTORY] == list(histories.vocabulary)
    assert ITEM_HISTORY not in model.item_tower.vocabularies()     # not asked for


def test_item_history_feature_is_looked_up_by_item_id(trained):
    model, histories, _ = _history_model(trained, user_history=False, item_history=True)
    histories = histories[ITEM_HISTORY]
    assert HISTORY not in model.user_tower.vocabularies()
    tower = model.item_tower
    encoder = tower.encoders[-1]
    assert tower.feature_inputs[-1] == (ITEM_HISTORY, "item_id")
    item = histories.keys[int(np.argmax([len(r) for r in histories.rows]))]
    got = encoder(tf.constant([item, "never-seen-item"])).numpy()
    table = encoder.embedding.embeddings.numpy()
    rows = histories.rows[histories.keys.index(item)]
    assert len(rows) > 1
    np.testing.assert_allclose(got[0], table[rows].sum(0) / np.sqrt(len(rows)), rtol=1e-5)
    np.testing.assert_array_equal(got[1], 0)               # a new item: no history
    assert tower.vocabularies()[ITEM_HISTORY] == list(histories.vocabulary)
    # The vocabulary is of users, most active first (ties by id).
    pairs = trainer.history_pairs(trained.dataset, trained.splits)
    active = pairs["user_id"].value_counts()
    assert list(histories.vocabulary) == sorted(active.index, key=lambda u: (-active[u], u))


def test_history_features_are_refused_where_they_cannot_be_built(trained):
    columns = join_features(trained.splits.train, trained.dataset)
    for field in ("user_history", "item_history"):
        config = tiny_config(trained.config.data_dir, **{field: True})
        with pytest.raises(ConfigError, match=field):
            trainer.build_model(config, trained.dataset, columns, 7.0)


def test_exported_towers_serve_the_stored_histories_and_warm_start(trained, tmp_path):
    """An ensemble of 2 with both history features: exported, served, identity, warm start."""
    from tte_tfrs.exports.writer import export
    from tte_tfrs.serving.recommender import Recommender
    from tte_tfrs.training.warm_start import warm_start
    config = tiny_config(trained.config.data_dir, user_history=True, item_history=True,
                         epochs=1, ensemble_members=2)
    result = trainer.train(config, trained.dataset)
    history_table = result.model.user_tower.tables()[HISTORY][1].embeddings.numpy()
    assert np.abs(history_table).sum() > 0
    out = export(result, str(tmp_path / "models"))
    users = result.model.user_tower.encoders[-1]
    known = next(u for u in trained.dataset.users["user_id"] if users.preprocess(
        tf.constant([u])).numpy()[0] > 0)
    row = trained.dataset.users[trained.dataset.users["user_id"] == known]
    features = {s.name: tf.constant(row[s.name].fillna("").astype(str).to_numpy())
                for s in trained.dataset.user_features if s.kind != "number"}
    features.update({s.name: tf.constant(row[s.name].to_numpy(np.float32))
                     for s in trained.dataset.user_features if s.kind == "number"})
    expected = result.model.user_tower(features).numpy()
    without = dict(features, user_id=tf.constant(["someone-new"]))
    loaded = tf.saved_model.load(out.paths["user_tower"]).signatures["serving_default"]
    np.testing.assert_allclose(loaded(**features)["embedding"].numpy(), expected, rtol=1e-5)
    # The same features without the stored id: the id row and the history are gone.
    assert not np.allclose(loaded(**without)["embedding"].numpy(), expected)
    recommender = Recommender.load(out.output_dir, backend="exact")
    recs = recommender.recommend(known, k=3)               # the Recommender serves it too
    scores = recommender.index.embeddings @ expected[0]
    scores[recommender.rated_rows(known)] = -np.inf
    assert recs[0].score == pytest.approx(float(scores.max()), rel=1e-5)
    # The ensemble as one dot product: exported embeddings give the members' mean rating.
    ids = list(recommender.index.ids[:20])
    items = trained.dataset.catalogue().set_index("item_id").loc[ids].reset_index()
    batch = {s.name: tf.constant(items[s.name].to_numpy(np.float32) if s.kind == "number"
                                 else items[s.name].to_numpy().astype(object))
             for s in trained.dataset.item_features}
    # The exported item tower serves the stored item histories by item id.
    loaded_items = tf.saved_model.load(out.paths["item_tower"]).signatures["serving_default"]
    expected_items = result.model.item_tower(batch).numpy()
    np.testing.assert_allclose(loaded_items(**batch)["embedding"].numpy(), expected_items,
                               rtol=1e-5, atol=1e-6)
    item_history = result.model.item_tower.encoders[-1]
    assert item_history.feature == ITEM_HISTORY
    assert (item_history.preprocess(batch["item_id"]).numpy() > 0).all()  # stored histories
    # The same features under an id the tower does not know: the id row and history are gone.
    unknown = dict(batch, item_id=tf.constant([f"new-{n}" for n in range(len(ids))]))
    new_items = loaded_items(**unknown)["embedding"].numpy()
    assert not np.allclose(new_items, expected_items, atol=1e-4)
    np.testing.assert_allclose(new_items, result.model.item_tower(unknown).numpy(), rtol=1e-5,
                               atol=1e-6)
    model = result.model
    users_m, _ = model.user_tower.members_with_penalty(model.user_tower.preprocess(features))
    items_m, _ = model.item_tower.members_with_penalty(model.item_tower.preprocess(batch))
    member_ratings = np.sum(users_m.numpy()[0][None] * items_m.numpy(), axis=-1)    # [20, 2]
    assert np.abs(member_ratings[:, 0] - member_ratings[:, 1]).max() > 1e-3     # two models
    served = recommender.index.embeddings[:20] @ loaded(**features)["embedding"].numpy()[0]
    np.testing.assert_allclose(served, member_ratings.mean(axis=1), rtol=1e-5, atol=1e-5)
    assert out.manifest["embedding_dim"] == 2 * config.embedding_dim + 2
    # A warm start keeps the feature; before training on it is the parent (same weights, same
    # stored histories: the parent's interactions less the held-out pairs).
    update = warm_start(out.output_dir, trained.dataset, epochs=1)
    assert update.config.user_history and update.config.item_history
    assert update.update["metrics_before"]["validation_rmse"] == pytest.approx(
        result.metrics["validation_rmse"], rel=1e-6)
    assert update.model.user_tower.vocabularies()[HISTORY] == \
        result.model.user_tower.vocabularies()[HISTORY]
    assert update.model.item_tower.vocabularies()[ITEM_HISTORY] == \
        result.model.item_tower.vocabularies()[ITEM_HISTORY]


def test_a_warm_start_grows_both_histories_with_the_new_interactions(trained, tmp_path):
    """New users arrive in an update: they get rows of the item history's table of users, and
    the items they interacted with list them (the parent's interactions kept)."""
    from tte_tfrs.exports.writer import export
    from tte_tfrs.training.warm_start import warm_start
    dataset = trained.dataset
    users = sorted(dataset.ratings["user_id"].astype(str).unique())
    late = dataset.ratings["user_id"].astype(str).isin(set(users[::5]))
    old = dataclasses.replace(dataset, ratings=dataset.ratings[~late].reset_index(drop=True))
    new = dataclasses.replace(dataset, ratings=dataset.ratings[late].reset_index(drop=True))
    config = tiny_config(trained.config.data_dir, user_history=True, item_history=True, epochs=1,
                         history_size=10 ** 6)
    parent = trainer.train(config, old)
    out = export(parent, str(tmp_path / "models"))
    update = warm_start(out.output_dir, new, epochs=1)
    before = parent.model.item_tower.vocabularies()[ITEM_HISTORY]
    after = update.model.item_tower.vocabularies()[ITEM_HISTORY]
    assert after[:len(before)] == before and len(after) > len(before)     # old rows kept
    assert update.update["vocabulary_growth"][ITEM_HISTORY] == [len(before), len(after)]
    encoder = update.model.item_tower.encoders[-1]
    pairs = trainer.history_pairs(new, update.splits)          # the update's own interactions
    pairs = pairs[pairs["user_id"].isin(set(after[len(before):]))]
    assert len(pairs)
    for user, item in pairs.head(10).itertuples(index=False):
        stored = encoder.stored[int(encoder.preprocess(tf.constant([item])).numpy()[0])]
        assert user in {after[row - 1] for row in stored.numpy()}       # listed by its item


def _batch(model, columns, n=128):
    return next(iter(make_training_dataset(model.preprocess,
                                           {k: v[:n] for k, v in columns.items()}, n)))


def test_retrieval_weight_zero_is_exactly_the_rating_loss(trained):
    plain, _, columns = _history_model(trained, regularization=0.0)
    joint, _, _ = _history_model(trained, regularization=0.0, retrieval_weight=0.5)
    batch = _batch(plain, columns)
    user = plain.user_tower.embed(batch["user"])
    item = plain.item_tower.embed(batch["item"])
    mse = tf.reduce_mean(tf.square(batch["rating"] - tf.reduce_sum(user * item, axis=1)))
    loss, penalty = plain.losses_of(batch, training=True)
    assert float(penalty) == 0.0
    np.testing.assert_allclose(float(loss), float(mse), rtol=1e-6)
    # Same seed, same weights: the joint loss is the rating loss plus w times the retrieval term.
    joint_loss, _ = joint.losses_of(batch, training=True)
    retrieval = joint.retrieval_loss(user, item, batch["item"])
    # In-batch softmax, logits lowered by log q (the item's training share), other rows of the
    # same item not counted as negatives.
    ids = batch["item"]["item_id"]["item_id"].numpy()
    logits = user.numpy() @ item.numpy().T - np.log(joint.item_probabilities.numpy()[ids])[None]
    logits[(ids[:, None] == ids[None, :]) & ~np.eye(len(ids), dtype=bool)] = -np.inf
    expected = np.mean(np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
                       + logits.max(1) - np.diag(logits))
    np.testing.assert_allclose(float(retrieval), expected, rtol=1e-4)
    np.testing.assert_allclose(float(joint_loss), float(mse) + 0.5 * float(retrieval),
                               rtol=1e-5)
    # Validation (test_step) scores the rating loss alone.
    np.testing.assert_allclose(float(joint.losses_of(batch)[0]), float(mse), rtol=1e-6)
    # Temperature tau and logQ strength alpha: logits <u, v> / tau - alpha log q.
    tuned, _, _ = _history_model(trained, regularization=0.0, retrieval_weight=0.5,
                                 retrieval_temperature=0.5, logq_strength=0.25)
    probabilities = trainer.item_probabilities(
        tuned.item_tower.vocabularies()["item_id"], columns["item_id"])[ids]
    logits = user.numpy() @ item.numpy().T / 0.5 - 0.25 * np.log(probabilities)[None]
    logits[(ids[:, None] == ids[None, :]) & ~np.eye(len(ids), dtype=bool)] = -np.inf
    expected = np.mean(np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
                       + logits.max(1) - np.diag(logits))
    np.testing.assert_allclose(float(tuned.retrieval_loss(user, item, batch["item"])), expected,
                               rtol=1e-4)


def test_sampling_probabilities_are_the_items_training_shares():
    probabilities = trainer.item_probabilities(["a", "b", "c"], np.array(["a", "a", "b", "x"]))
    np.testing.assert_allclose(probabilities, [0.25, 0.5, 0.25, 0.25])   # row 0: unknown "x"


@pytest.mark.parametrize("field, overrides", [
    ("user_history", dict(user_history=True)),
    ("item_history", dict(item_history=True)),
    ("retrieval_weight", dict(user_history=False, retrieval_weight=0.3))])
def test_streamed_or_distributed_training_refuses_what_it_cannot_train(tiny_data, field,
                                                                       overrides):
    for scale in (dict(input_mode="streaming"), dict(strategy="multi_worker")):
        with pytest.raises(ConfigError, match=field) as caught:
            trainer.train(tiny_config(tiny_data[0], **overrides, **scale))
        assert caught.value.field == field and "not supported with" in str(caught.value)
