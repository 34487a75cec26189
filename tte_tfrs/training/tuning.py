"""Per-data-set tuning on the validation rows with Optuna, under a trial and/or time budget.

``TrainConfig.tune_trials`` / ``tune_minutes`` (``tte-train --tune_trials=N --tune_minutes=M``)
make `tte_tfrs.training.trainer.train` search `SPACE` with Optuna's seeded TPE sampler. Each trial
trains on the training rows with early stopping and is scored by its validation RMSE (test rows are
never used to choose). The first trial is the given config itself, so tuning can only keep or
improve its validation RMSE. The best trial's fitted model is the result (nothing is trained
twice); its ``tuning`` record (budget, every trial, the chosen values) goes into the manifest.

May import: tte_tfrs.data, tte_tfrs.training.
"""

from __future__ import annotations

import dataclasses
import time

from tte_tfrs.data.dataset import Dataset, join_features
from tte_tfrs.data.loader import load_dataset
from tte_tfrs.errors import ConfigError
from tte_tfrs.training.config import TrainConfig

# field -> ("log", low, high) or ("choice", values)
SPACE = {
    "learning_rate": ("log", 0.1, 1.0),
    "regularization": ("log", 0.03, 0.5),
    "embedding_dim": ("choice", (16, 32, 64)),
    # The user-history feature helps on real interaction data (MovieLens, Book-Crossing) and
    # hurts where who rates what carries no taste (BENCHMARKS.md): chosen per data set.
    "user_history": ("choice", (False, True)),
    # Its mirror image in the item tower: the same, and it wants a learning rate near 0.25.
    "item_history": ("choice", (False, True)),
    # Weight averaging helps some data sets and costs others a little (BENCHMARKS.md).
    "weight_average_decay": ("choice", (0.0, 0.9)),
}


def _suggest(trial, space):
    values = {}
    for name, spec in space.items():
        if spec[0] == "log":
            values[name] = trial.suggest_float(name, spec[1], spec[2], log=True)
        else:
            values[name] = trial.suggest_categorical(name, list(spec[1]))
    return values


def _around(space, config):
    """`space` widened to hold the config's own values (the first trial)."""
    out = {}
    for name, spec in space.items():
        value = getattr(config, name)
        if spec[0] == "log":
            out[name] = ("log", min(spec[1], value), max(spec[2], value))
        else:
            out[name] = ("choice", tuple(sorted(set(spec[1]) | {value})))
    return out


def tune(config: TrainConfig, dataset: Dataset | None = None, space: dict | None = None):
    """Trains ``config`` and the settings Optuna proposes around it; returns the best run.

    Args:
      config: the run's settings; ``tune_trials`` (0: no limit) and ``tune_minutes`` (0: no
        limit; no new trial starts after it) set the budget, at least one of them > 0.
      dataset: an already loaded `Dataset`; None loads ``config.data_dir`` (once).
      space: {field: spec}; default `SPACE`.

    Returns:
      The best trial's `TrainResult`, whose config is ``config`` with the chosen values and whose
      ``tuning`` holds the record for the manifest.
    """
    import optuna

    from tte_tfrs.training import trainer
    space = _around(space or SPACE, config)
    if dataset is None:
        dataset = load_dataset(config.data_dir, config.dataset)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=config.seed))
    study.enqueue_trial({name: getattr(config, name) for name in space})
    started = time.perf_counter()
    best: dict = {}
    diverged: list = []

    def objective(trial):
        values = _suggest(trial, space)
        # Trials are scored on validation; only the chosen one is refitted (below).
        trial_config = dataclasses.replace(config, tune_trials=0, tune_minutes=0.0, refit=False,
                                           **values)
        try:
            result = trainer.train(trial_config, dataset)
        except ConfigError as exc:
            if not trainer.is_divergence(exc):
                raise
            # A setting that diverges (too large a learning rate, say) loses; the search goes on.
            diverged.append({"params": values, "error": str(exc)})
            if config.verbose:
                print(f"Tuning trial {trial.number}: {values} -> diverged", flush=True)
            raise optuna.TrialPruned() from None
        score = result.metrics["validation_rmse"]
        if config.verbose:
            print(f"Tuning trial {trial.number}: {values} -> validation RMSE {score:.4f}",
                  flush=True)
        if "result" not in best or score < best["score"]:
            best.update(result=result, score=score)
        return score

    study.optimize(objective, n_trials=config.tune_trials or None,
                   timeout=60.0 * config.tune_minutes if config.tune_minutes else None)
    if "result" not in best:
        raise ConfigError(f"every tuning trial diverged ({len(diverged)}); the first: "
                          f"{diverged[0]['error']}", field="learning_rate")
    result = best["result"]
    result.config = dataclasses.replace(config, **study.best_params)
    if config.refit:
        train_columns = join_features(result.splits.train, result.dataset)
        validation_columns = join_features(result.splits.validation, result.dataset)
        result.model, refit_metrics = trainer.refit(result.config, result.dataset, result.splits,
                                                    train_columns, validation_columns,
                                                    result.history)
        result.metrics.update(refit_metrics)
    result.tuning = {
        "sampler": "optuna TPE", "objective": "validation_rmse",
        "trials_budget": config.tune_trials, "minutes_budget": config.tune_minutes,
        "seconds": round(time.perf_counter() - started, 1), "space": {
            name: list(spec[1]) if spec[0] == "choice" else [spec[0], spec[1], spec[2]]
            for name, spec in space.items()},
        "best_validation_rmse": float(best["score"]), "best_params": study.best_params,
        "trials": [{"params": t.params, "validation_rmse": t.value}
                   for t in study.trials if t.value is not None],
        "diverged_trials": [d["params"] for d in diverged]}
    return result
