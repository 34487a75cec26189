"""Cross-fitting (`TrainConfig.cross_fit`): an ensemble that also trains on the validation rows,
each row left out of one member, with validation scored by that member only."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tte_tfrs.data.dataset import join_features
from tte_tfrs.data.tfdata import make_training_dataset
from tte_tfrs.errors import ConfigError
from tte_tfrs.model.towers import ITEM, USER
from tte_tfrs.model.two_tower import HOLDOUT, RATING
from tte_tfrs.training import trainer


@pytest.fixture(scope="module")
def cross_fitted(trained):
    config = tiny_config(trained.config.data_dir, ensemble_members=2, cross_fit=True, epochs=4,
                         early_stopping_patience=2)
    return trainer.train(config, trained.dataset)


def _member_predictions(model, columns):
    data = make_training_dataset(model.preprocess, columns, 4096)
    out = []
    for batch in data:
        users, _ = model.user_tower.members_with_penalty(batch[USER])
        items, _ = model.item_tower.members_with_penalty(batch[ITEM])
        out.append(tf.reduce_sum(users * items, axis=-1).numpy())
    return np.concatenate(out)                                          # [rows, M]


def test_a_row_held_out_from_a_member_never_moves_that_member(trained):
    config = tiny_config(trained.config.data_dir, ensemble_members=2, cross_fit=True,
                         regularization=0.0)
    _, _, train_columns, validation_columns = trainer.start(config, trained.dataset)
    both, _ = trainer.cross_fit_columns(config, train_columns, validation_columns)
    model = trainer.build_model(config, trained.dataset, both, 3.0)
    n = 256
    batch = {k: v[:n] for k, v in both.items()}
    k1 = config.embedding_dim + 1
    for member in (0, 1):
        inputs = next(iter(make_training_dataset(
            model.preprocess, dict(batch, **{HOLDOUT: np.full(n, member, np.int64)}), n)))
        with tf.GradientTape() as tape:
            loss, _ = model.losses_of(inputs, training=True)
        gradients = tape.gradient(loss, model.trainable_variables)
        tables = [(v, tf.convert_to_tensor(g).numpy()) for v, g in
                  zip(model.trainable_variables, gradients)
                  if g is not None and v.shape[-1] == 2 * k1]
        assert tables                                  # the id, feature and bias tables
        kept, trained_cols = slice(member * k1, (member + 1) * k1), \
            slice((1 - member) * k1, (2 - member) * k1)
        for variable, gradient in tables:
            assert not np.any(gradient[..., kept]), variable.name
        assert any(np.any(gradient[..., trained_cols]) for _, gradient in tables)
    # Without a holdout both members learn from the row.
    inputs = next(iter(make_training_dataset(model.preprocess, batch, n)))
    with tf.GradientTape() as tape:
        loss, _ = model.losses_of({k: v for k, v in inputs.items() if k != HOLDOUT},
                                  training=True)
    first_table = [tf.convert_to_tensor(g).numpy() for v, g in
                   zip(model.trainable_variables,
                       tape.gradient(loss, model.trainable_variables))
                   if g is not None and v.shape[-1] == 2 * k1][0]
    assert np.any(first_table[..., :k1]) and np.any(first_table[..., k1:])


def test_validation_rows_are_dealt_to_members_and_all_rows_trained(trained):
    config = tiny_config(trained.config.data_dir, ensemble_members=3, cross_fit=True)
    _, splits, train_columns, validation_columns = trainer.start(config, trained.dataset)
    both, validation = trainer.cross_fit_columns(config, train_columns, validation_columns)
    assert len(both[RATING]) == len(splits.train) + len(splits.validation)
    assert (both[HOLDOUT][:len(splits.train)] == -1).all()
    np.testing.assert_array_equal(both[HOLDOUT][len(splits.train):], validation[HOLDOUT])
    counts = np.bincount(validation[HOLDOUT], minlength=3)
    assert counts.max() - counts.min() <= 1 and counts.sum() == len(splits.validation)
    # Dealt in a seeded order, not in file order.
    assert not np.array_equal(validation[HOLDOUT], np.arange(len(splits.validation)) % 3)
    again = trainer.cross_fit_columns(config, train_columns, validation_columns)[1]
    np.testing.assert_array_equal(again[HOLDOUT], validation[HOLDOUT])


def test_reported_validation_rmse_scores_each_row_by_the_member_that_never_saw_it(
        cross_fitted):
    result = cross_fitted
    _, validation = trainer.cross_fit_columns(
        result.config, join_features(result.splits.train, result.dataset),
        join_features(result.splits.validation, result.dataset))
    members = _member_predictions(result.model, validation)
    out_of_fold = members[np.arange(len(members)), validation[HOLDOUT]]
    truth = validation[RATING]
    expected = float(np.sqrt(np.mean((truth - out_of_fold) ** 2)))
    assert result.metrics["validation_rmse"] == pytest.approx(expected, rel=1e-4)
    assert result.metrics["validation_rmse"] == pytest.approx(min(result.history["val_rmse"]))
    # The members' mean (what is exported) has learnt from these rows: it scores them better.
    mean = float(np.sqrt(np.mean((truth - members.mean(axis=1)) ** 2)))
    assert mean < expected
    # Users seen only in validation rows get their own rows: the ensemble trained on them.
    splits = result.splits
    only_validation = set(splits.validation["user_id"].astype(str)) - \
        set(splits.train["user_id"].astype(str))
    assert only_validation and only_validation <= set(
        result.model.user_tower.vocabularies()["user_id"])


def test_a_cross_fitted_export_refuses_validation_scoring_and_updates_hold_rows_out(
        cross_fitted, tmp_path):
    from tte_tfrs.evaluation.evaluate import EvaluationConfig, evaluate
    from tte_tfrs.exports.writer import export
    from tte_tfrs.training.warm_start import warm_start
    out = export(cross_fitted, str(tmp_path / "models"))
    assert out.manifest["config"]["cross_fit"] is True
    with pytest.raises(ConfigError, match="cross-fitted") as caught:
        evaluate(EvaluationConfig(output_dir=out.output_dir, split="validation"))
    assert caught.value.field == "split"
    with pytest.raises(ConfigError, match="new model only") as caught:
        warm_start(out.output_dir, cross_fitted.dataset, cross_fit=True)
    assert caught.value.field == "cross_fit"
    update = warm_start(out.output_dir, cross_fitted.dataset, epochs=1)
    assert update.config.cross_fit is False


@pytest.mark.parametrize("overrides, message", [
    (dict(cross_fit=True), "ensemble_members > 1"),
    (dict(cross_fit=True, ensemble_members=2, refit=True, early_stopping_patience=2),
     "choose one"),
])
def test_cross_fit_settings_that_cannot_work_are_refused(tiny_data, overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        tiny_config(tiny_data[0], **overrides)
    assert caught.value.field == "cross_fit"
