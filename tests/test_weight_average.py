"""The per-epoch weight average (`TrainConfig.weight_average_decay`): validated, early-stopped on
and exported, while training goes on from the raw weights."""

import dataclasses
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tte_tfrs.errors import ConfigError
from tte_tfrs.training import trainer
from tte_tfrs.training.config import TrainConfig


def _one_weight_model():
    model = tf.keras.Sequential([tf.keras.layers.Dense(2, use_bias=False)])
    model.build((None, 3))
    return model


def test_the_average_is_normalised_and_the_raw_weights_come_back():
    model = _one_weight_model()
    variable = model.trainable_weights[0]
    average = trainer.WeightAverage(0.5)
    average.set_model(model)
    raw = [np.full((3, 2), value, np.float32) for value in (4.0, 1.0, 10.0)]
    expected = [4.0, (0.5 * 4 + 1) / 1.5, (0.25 * 4 + 0.5 * 1 + 10) / 1.75]
    for epoch, (weights, mean) in enumerate(zip(raw, expected)):
        average.on_epoch_begin(epoch)
        if epoch:                                      # the raw weights of the epoch before
            np.testing.assert_array_equal(variable.numpy(), raw[epoch - 1])
        variable.assign(weights)                       # what the epoch's steps left
        if epoch == 1:                                 # no validation pass: swapped at the end
            average.on_epoch_end(epoch)
        else:
            average.on_test_begin()
            average.on_test_end()
            average.on_epoch_end(epoch)                # swaps once per epoch only
        np.testing.assert_allclose(variable.numpy(), np.full((3, 2), mean), rtol=1e-6)


def test_the_epoch_timer_leaves_out_the_raw_weights_coming_back():
    # The average restores the raw weights in its on_epoch_begin, after the timer's: that work
    # must not count as training time (epoch_examples_per_second).
    class SlowEpochBegin(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            time.sleep(1.0)

    model = _one_weight_model()
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=trainer.STEPS_PER_EXECUTION)
    timer, callbacks = trainer.make_callbacks(TrainConfig(weight_average_decay=0.5,
                                                          early_stopping_patience=0),
                                              validation=[SlowEpochBegin()])
    features = np.ones((64, 3), np.float32)
    model.fit(features, np.ones((64, 2), np.float32), batch_size=8, epochs=3, verbose=0,
              callbacks=callbacks)
    assert len(timer.seconds) == 3
    assert max(timer.seconds[1:]) < 1.0, timer.seconds    # the first epoch also traces


def test_no_callback_of_a_fit_has_batch_hooks(tmp_path):
    # ParameterServerStrategy's fit refuses batch-level callbacks.
    config = TrainConfig(weight_average_decay=0.5, early_stopping_patience=2, log_dir=str(tmp_path))
    for callback in trainer.make_callbacks(config)[1]:
        assert not callback._implements_train_batch_hooks(), callback
        assert not callback._implements_test_batch_hooks(), callback


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5, float("nan"), True])
def test_a_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(ConfigError, match="weight_average_decay"):
        TrainConfig(weight_average_decay=decay).validate()


@pytest.fixture(scope="module", params=["memory", "streaming"])
def raw_and_averaged(request, tiny_data, tmp_path_factory):
    # Streaming validates in a callback (after the average's), not in Keras' validation pass.
    config = tiny_config(tiny_data[0], epochs=5, early_stopping_patience=5,
                         input_mode=request.param,
                         streaming_dir=str(tmp_path_factory.mktemp("shards")))
    raw = trainer.train(dataclasses.replace(config, weight_average_decay=0.0))
    averaged = trainer.train(dataclasses.replace(config, weight_average_decay=0.7))
    return raw, averaged


def test_training_goes_on_from_the_raw_weights(raw_and_averaged):
    raw, averaged = raw_and_averaged
    # The same seed gives the same steps: the training loss of every epoch is the raw run's,
    # while the validation RMSE (of the averaged weights) differs from the second epoch on.
    np.testing.assert_allclose(averaged.history["loss"], raw.history["loss"], rtol=1e-5)
    assert averaged.history["val_rmse"][0] == pytest.approx(raw.history["val_rmse"][0], rel=1e-5)
    assert not np.allclose(averaged.history["val_rmse"][1:], raw.history["val_rmse"][1:],
                           rtol=1e-4)


def test_the_exported_weights_are_the_validated_average(raw_and_averaged):
    for result in raw_and_averaged:
        best = min(result.history["val_rmse"])
        assert result.metrics["validation_rmse"] == pytest.approx(best, rel=1e-5)
