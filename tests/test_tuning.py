"""tte-train --tune_trials / --tune_minutes: Optuna on the validation rows, recorded in the manifest."""

import dataclasses

import pytest
from conftest import tiny_config

from tte_tfrs.errors import ConfigError
from tte_tfrs.exports.writer import _manifest
from tte_tfrs.training import trainer


def test_tuning_keeps_the_best_validation_trial_and_records_every_trial(trained):
    # A poor first setting (a tiny step for one epoch), so the search has something to improve.
    config = tiny_config(trained.config.data_dir, epochs=1, tune_trials=2, verbose=0,
                         learning_rate=0.02, early_stopping_patience=1, refit=True)
    result = trainer.train(config, trained.dataset)
    record = result.tuning
    trials = record["trials"]
    assert len(trials) == 2 and record["trials_budget"] == 2
    assert trials[0]["params"] == {"learning_rate": config.learning_rate,    # the given settings
                                   "regularization": config.regularization,
                                   "embedding_dim": config.embedding_dim,
                                   "user_history": config.user_history,
                                   "item_history": config.item_history,
                                   "weight_average_decay": config.weight_average_decay}
    scores = [t["validation_rmse"] for t in trials]
    assert scores[0] > min(scores)                               # a later trial won
    assert result.metrics["validation_rmse"] == pytest.approx(min(scores))
    assert record["best_validation_rmse"] == pytest.approx(min(scores))
    best = trials[scores.index(min(scores))]["params"]
    assert result.config.embedding_dim == best["embedding_dim"] == \
        result.model.user_tower.latent_dim
    assert result.config.learning_rate == best["learning_rate"]
    # Only the chosen settings are refitted, on training + validation rows.
    splits = result.splits
    assert result.metrics["refit_rows"] == len(splits.train) + len(splits.validation)
    manifest = _manifest(result, 1, 10, 10, [])
    assert manifest["tuning"] == record and manifest["config"]["tune_trials"] == 2


def test_tuning_settings_are_checked():
    with pytest.raises(ConfigError) as caught:
        tiny_config("x", tune_minutes=-1)
    assert caught.value.field == "tune_minutes"


def test_a_diverging_trial_loses_and_the_search_goes_on(trained):
    """A setting that trains to NaN is recorded as diverged, not the end of the search; only
    when every trial diverges does tuning fail, with the divergence message."""
    from tte_tfrs.training import tuning
    config = tiny_config(trained.config.data_dir, epochs=1, tune_trials=3, verbose=0,
                         learning_rate=1e30, early_stopping_patience=1)
    space = {"learning_rate": ("choice", (1e30, 0.3))}
    result = tuning.tune(config, trained.dataset, space)
    record = result.tuning
    assert {"learning_rate": 1e30} in record["diverged_trials"]     # the first trial
    assert record["trials"] and all(t["params"]["learning_rate"] == 0.3
                                    for t in record["trials"])
    assert result.config.learning_rate == 0.3
    with pytest.raises(ConfigError, match="every tuning trial diverged") as caught:
        tuning.tune(dataclasses.replace(config, tune_trials=1), trained.dataset, space)
    assert caught.value.field == "learning_rate"
