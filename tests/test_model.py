"""The tfrs model: loss, regularization, determinism, quality against the planted truth."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tte_tfrs.data.dataset import join_features
from tte_tfrs.training.trainer import predict, train


def test_loss_goes_down_and_beats_the_global_mean(trained):
    history = trained.history
    assert history["total_loss"][-1] < 0.7 * history["total_loss"][0]
    assert trained.metrics["test_rmse"] < 0.9 * trained.metrics["baseline_rmse"]
    assert trained.metrics["test_mae"] < trained.metrics["baseline_mae"]


def test_prediction_is_the_dot_product_of_the_towers(trained):
    columns = join_features(trained.splits.test.head(64), trained.dataset)
    batch = {k: tf.constant(v) for k, v in columns.items()}
    u = trained.model.user_tower(batch).numpy()
    v = trained.model.item_tower(batch).numpy()
    np.testing.assert_allclose(trained.model(batch).numpy(), np.sum(u * v, axis=1), rtol=1e-6)


def test_predictions_follow_the_planted_truth(trained, tiny_data):
    truth = tiny_data[1]
    lookup = truth.lookup()
    test = trained.splits.test
    rows = [lookup.get(key) for key in zip(test["user_id"], test["item_id"])]
    mask = np.array([r is not None for r in rows])
    expected = truth.expected_rating()[[r for r in rows if r is not None]]
    predicted = predict(trained.model, join_features(test[mask], trained.dataset))
    assert np.corrcoef(predicted, expected)[0, 1] > 0.5


def regularization_loss(model, splits, dataset):
    """J of `model` on the first 256 training rows, whatever the scope."""
    from tte_tfrs.data.tfdata import make_training_dataset
    columns = join_features(splits.train.head(256), dataset)
    batch = next(iter(make_training_dataset(model.preprocess, columns, 256)))
    return float(model.losses_of(batch)[1])


def untrained_j(configs):
    """J of a freshly built model of each config (same seed: the same initial weights)."""
    from tte_tfrs.training.trainer import build_model, seed_process, start
    dataset, splits, train_columns, _ = start(configs[0])
    out = []
    for config in configs:
        seed_process(config)                             # seeds TensorFlow as training does
        model = build_model(config, dataset, train_columns, 7.0)
        out.append(regularization_loss(model, splits, dataset))
    return out


@pytest.mark.parametrize("scope", ["table", "batch"])
def test_regularization_loss_is_nonzero_and_grows_with_gamma(tiny_data, scope):
    keys = [(kind, gamma) for kind in ("l1", "l2") for gamma in (0.0, 1e-4, 1e-3)]
    j = dict(zip(keys, untrained_j([tiny_config(tiny_data[0], regularizer=kind, regularization=gamma,
                                                regularization_scope=scope) for kind, gamma in keys])))
    for kind in ("l1", "l2"):
        assert j[kind, 0.0] == 0.0
        assert 0 < j[kind, 1e-4] and j[kind, 1e-3] == pytest.approx(10 * j[kind, 1e-4], rel=1e-5)
        result = train(tiny_config(tiny_data[0], epochs=1, regularizer=kind, regularization=1e-3,
                                   regularization_scope=scope))
        assert result.history["regularization_loss"][-1] > 0     # reported by tfrs in training
        assert regularization_loss(result.model, result.splits, result.dataset) > 0
    assert j["l1", 1e-3] != pytest.approx(j["l2", 1e-3])


@pytest.mark.parametrize("scope, sparse", [("table", False), ("batch", True)])
def test_batch_scoped_regularization_keeps_embedding_gradients_sparse(trained, scope, sparse):
    import tensorflow as tf

    from tte_tfrs.data.tfdata import make_training_dataset
    from tte_tfrs.training.trainer import build_model
    config = tiny_config(trained.config.data_dir, regularization_scope=scope, regularization=0.1)
    columns = join_features(trained.splits.train, trained.dataset)
    model = build_model(config, trained.dataset, columns, 7.0)
    batch = next(iter(make_training_dataset(model.preprocess, {k: v[:64] for k, v in
                                                               columns.items()}, 64)))
    with tf.GradientTape() as tape:
        loss = tf.add_n(model.losses_of(batch, training=True))
    table = model.user_tower.tables()["user_id"][1].embeddings
    gradient = tape.gradient(loss, table)
    assert isinstance(gradient, tf.IndexedSlices) == sparse
    if sparse:                                  # only the rows of the batch's users
        assert len(np.unique(gradient.indices.numpy())) <= 64 < table.shape[0]


def weights_of(result):
    return [w.numpy() for w in result.model.trainable_weights]


def initial_state(config):
    from tte_tfrs.training.trainer import build_model, start
    dataset, splits, train_columns, _ = start(config)
    model = build_model(config, dataset, train_columns, 7.0)
    predict(model, {name: values[:4] for name, values in train_columns.items()})   # builds it
    return splits.test["line"].tolist(), [w.numpy() for w in model.trainable_weights]


def differ(weights, others):
    return any(a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-6)
               for a, b in zip(weights, others))


def test_same_seed_same_start_and_the_same_model_to_float_rounding(tiny_data, capsys):
    # A seed fixes the split, the initial weights and the batch order exactly. TensorFlow's
    # multi-threaded CPU kernels may add partial sums in another order from run to run, so the
    # trained weights are promised equal to float rounding, not bit for bit (README, --seed).
    lines, start = initial_state(tiny_config(tiny_data[0]))
    lines_again, start_again = initial_state(tiny_config(tiny_data[0]))
    lines_other, start_other = initial_state(tiny_config(tiny_data[0], seed=43))
    assert lines == lines_again and lines != lines_other
    for a, b in zip(start, start_again):
        np.testing.assert_array_equal(a, b)
    assert differ(start, start_other)

    first, second = [train(tiny_config(tiny_data[0], epochs=2)) for _ in range(2)]
    other = train(tiny_config(tiny_data[0], epochs=2, seed=43))
    for a, b in zip(weights_of(first), weights_of(second)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert first.metrics["test_rmse"] == pytest.approx(second.metrics["test_rmse"], abs=1e-5)
    assert differ(weights_of(first), weights_of(other))
    printed = capsys.readouterr().out                      # train() shows progress by default
    assert "Preparing 4," in printed and "Epoch 2/2" in printed


def test_early_stopping_keeps_the_best_epochs_weights_and_optimizer_state(trained):
    from tte_tfrs.training import checkpoint
    from tte_tfrs.training.trainer import BestEpoch, build_model, fit
    config = tiny_config(trained.config.data_dir, epochs=1, verbose=0)
    columns = join_features(trained.splits.train.head(512), trained.dataset)
    model = build_model(config, trained.dataset, columns, 7.0)
    fit(model, config, columns, columns)                        # builds Adagrad's accumulators
    state = lambda: [v.numpy().copy() for v in model.weights + model.optimizer.variables]  # noqa: E731
    keeper = BestEpoch()
    keeper.set_model(model)
    keeper.on_epoch_end(0, {"val_rmse": 1.5})                   # the best epoch
    best = state()
    for variable in model.weights + model.optimizer.variables:  # a later, worse epoch
        variable.assign(variable + tf.ones_like(variable))
    keeper.on_epoch_end(1, {"val_rmse": 1.7})
    keeper.on_train_end()
    for kept, expected in zip(state(), best):
        np.testing.assert_array_equal(kept, expected)
    assert checkpoint._accumulators(model)                      # found by key, all of them


def test_a_diverging_run_stops_with_a_message_and_nothing_is_exported(tiny_data, tmp_path, capsys):
    from tte_tfrs.scripts import train as train_script
    out = tmp_path / "models"
    assert train_script.run(["tte-train", f"--data_dir={tiny_data[0]}", f"--output_dir={out}",
                             "--learning_rate=1e30", "--verbose=0", "--epochs=2"]) == 2
    assert ("--learning_rate: training diverged: the loss in epoch 1 became NaN or infinite"
            in capsys.readouterr().err)
    assert not (out / "manifest.json").exists() and not (out / "user_tower").exists()


def test_implicit_ratings_are_excluded_unless_asked(tiny_data):
    import tte_tfrs
    from tte_tfrs.data.split import split_ratings
    dataset = tte_tfrs.load_dataset(tiny_data[0])
    explicit = split_ratings(dataset)
    everything = split_ratings(dataset, include_implicit=True)
    assert (explicit.train["rating"] > 0).all()
    assert (everything.train["rating"] == 0).any()
    n_explicit = sum(explicit.sizes().values())
    assert n_explicit == dataset.counts()["explicit_ratings"]
    assert sum(everything.sizes().values()) == len(dataset.ratings)
    keys = [set(zip(s["user_id"], s["item_id"])) for s in
            (explicit.train, explicit.validation, explicit.test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])


def test_refit_trains_on_training_and_validation_rows_for_the_chosen_epochs(trained, tmp_path):
    import dataclasses

    from tte_tfrs.errors import ConfigError
    from tte_tfrs.evaluation.evaluate import EvaluationConfig, evaluate
    from tte_tfrs.exports.writer import export
    from tte_tfrs.training.trainer import rmse_mae
    config = dataclasses.replace(trained.config, epochs=6, early_stopping_patience=2, refit=True,
                                 verbose=0)
    result = train(config, trained.dataset)
    first = train(dataclasses.replace(config, refit=False), trained.dataset)
    chosen = int(np.argmin(first.history["val_rmse"])) + 1
    splits = result.splits
    assert result.metrics["refit_epochs"] == chosen
    assert result.metrics["refit_rows"] == len(splits.train) + len(splits.validation)
    # The reported validation RMSE is the first model's (rows it did not train on) ...
    assert result.metrics["validation_rmse"] == pytest.approx(first.metrics["validation_rmse"])
    # ... the model (and its test RMSE) is the refitted one, which knows validation-only users.
    test = join_features(splits.test, result.dataset)
    assert result.metrics["test_rmse"] == pytest.approx(
        rmse_mae(test["rating"], predict(result.model, test))[0], rel=1e-5)
    assert result.metrics["test_rmse"] != pytest.approx(first.metrics["test_rmse"], rel=1e-6)
    only_validation = set(splits.validation["user_id"].astype(str)) - \
        set(splits.train["user_id"].astype(str))
    vocabulary = set(result.model.user_tower.vocabularies()["user_id"])
    assert only_validation and only_validation <= vocabulary
    assert not only_validation & set(first.model.user_tower.vocabularies()["user_id"])
    # Its validation rows are not held out any more: tte-evaluate refuses to score them.
    out = export(result, str(tmp_path / "models"))
    with pytest.raises(ConfigError, match="refitted") as caught:
        evaluate(EvaluationConfig(output_dir=out.output_dir, split="validation"))
    assert caught.value.field == "split"
