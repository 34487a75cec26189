"""The main jobs in one call, reporting as they go: load -> train -> export, and
warm start -> export -> refresh the parent's indexes.

May import every stage (it chains them); nothing but the scripts and the package root imports it.
"""

import contextlib
import os

from tte_tfrs import paths
from tte_tfrs.data.loader import load_dataset
from tte_tfrs.data.streaming import read_streamed
from tte_tfrs.exports import lifecycle
from tte_tfrs.exports.writer import export
from tte_tfrs.retrieval.building import refresh_indexes
from tte_tfrs.training import distributed
from tte_tfrs.training.scaled import wants_streaming
from tte_tfrs.training.trainer import train
from tte_tfrs.training.warm_start import warm_start


def train_and_export(config, output_dir, log=print):
    """Loads the data of `config`, trains, exports to `output_dir` and reports through `log`.

    The writer lock of `output_dir` is taken first and held throughout, and every output folder
    is checked to be writable, so a second writer or a bad path stops before any work.

    Returns:
      (TrainResult, ExportResult).

    Raises:
      ExportLockedError: another process writes to `output_dir`. ConfigError: a bad setting or
      an output folder that cannot be written. DataError: unusable data.
    """
    role = distributed.read_role(config.strategy)
    # The exporting process holds the writer lock throughout; other workers export to a
    # temporary folder of their own and must not block it.
    lock = lifecycle.writer_lock(output_dir) if role.is_chief else contextlib.nullcontext()
    with lock:
        if config.log_dir:
            paths.writable_folder(config.log_dir, "log_dir")
        role, _ = distributed.start(config)      # before any TensorFlow op (multi_worker needs it)
        if not role.trains:
            log(f"Serving as {role.describe()} (--strategy={config.strategy}) until stopped")
            distributed.serve(role)
        if role.task_type is not None:
            log(f"Training as {role.describe()} (--strategy={config.strategy})")
        if wants_streaming(config):
            dataset = read_streamed(config.data_dir, config.dataset, work_dir=config.streaming_dir)
            log("Streaming: the ratings are read in chunks and kept on disk")
        else:
            dataset = load_dataset(config.data_dir, config.dataset)
        try:
            return _train_and_export(config, output_dir, log, role, dataset)
        finally:
            if hasattr(dataset, "close"):               # streamed rows on disk
                dataset.close()


def _train_and_export(config, output_dir, log, role, dataset):
    log(f"Read {dataset.name} ({dataset.layout} layout) from {dataset.source}")
    log(dataset.report.format())
    log(f"Training on {'all' if config.include_implicit else 'explicit'} ratings "
        f"(embedding_dim={config.embedding_dim}, optimizer={config.optimizer}, "
        f"learning_rate={config.learning_rate}, batch_size={config.batch_size}, "
        f"{config.regularizer} regularization={config.regularization}, seed={config.seed})")
    result = train(config, dataset)
    log(f"Splits: {result.splits.sizes()}; stopped after {result.metrics['epochs_run']} epochs "
        f"in {result.metrics['train_seconds']:.1f} s "
        f"({result.metrics['train_examples_per_second']:,} examples/s overall, "
        f"{result.metrics['epoch_examples_per_second']:,} per epoch after the first)")
    with distributed.export_folder(output_dir, role) as folder:
        exported = export(result, folder)
    if role.is_chief:
        log(f"Exported version {exported.version} to {os.path.abspath(output_dir)}")
    else:
        log(f"Not the chief: exported version {exported.version} to a temporary folder, removed")
    log(format_metrics(result.metrics))
    return result, exported


def update_and_export(output_dir, log=print, dataset=None, **overrides):
    """Warm-starts from the current version of `output_dir`, exports the next version and
    refreshes the parent's ANN indexes; reports through `log`.

    Args:
      output_dir: the export root to continue (and write to).
      dataset, overrides: as for `tte_tfrs.training.warm_start.warm_start`.

    Returns:
      (TrainResult, ExportResult, {backend: index metadata}).

    Raises:
      ExportLockedError: another process writes to `output_dir` (checked first).
    """
    with lifecycle.writer_lock(output_dir):
        if overrides.get("log_dir"):
            paths.writable_folder(overrides["log_dir"], "log_dir")
        return _update_and_export(output_dir, log, dataset, **overrides)


def _update_and_export(output_dir, log, dataset, **overrides):
    result = warm_start(output_dir, dataset, **overrides)
    update = result.update
    log(f"Continued version {update['parent_version']} with {result.dataset.source}: "
        + ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in update["data_added"].items()))
    grown = {k: v for k, v in update["vocabulary_growth"].items() if v[1] > v[0]}
    log("Vocabularies grown: " + (", ".join(f"{k} {a:,} -> {b:,}" for k, (a, b) in grown.items())
                                  or "none"))
    log(f"Stopped after {result.metrics['epochs_run']} epochs in "
        f"{result.metrics['train_seconds']:.1f} s")
    exported = export(result, output_dir)
    log(f"Exported version {exported.version} to {os.path.abspath(output_dir)}")
    before, after = update["metrics_before"], update["metrics_after"]
    for name in ("validation_rmse", "test_rmse"):
        if name in after:
            log(f"{name.replace('_', ' ')} on the new data: {before[name]:.4f} before the update, "
                f"{after[name]:.4f} after")
    indexes = refresh_indexes(output_dir, result.parent.version)
    for backend, meta in indexes.items():
        log(f"Index {backend}: {meta['refresh']}")
    return result, exported, indexes


def format_metrics(metrics):
    """A small table of the test metrics next to the global-mean baseline."""
    if "test_rmse" not in metrics:
        return f"validation RMSE {metrics['validation_rmse']:.4f} (no test split)"
    lines = [f"{'':18}{'RMSE':>8}{'MAE':>8}",
             f"{'two-tower (test)':18}{metrics['test_rmse']:8.4f}{metrics['test_mae']:8.4f}",
             f"{'global mean':18}{metrics['baseline_rmse']:8.4f}{metrics['baseline_mae']:8.4f}"]
    return "\n".join(lines)
