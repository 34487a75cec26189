"""The main job in one call: load -> train -> export, reporting as it goes."""

import os

from tte_tfrs.data.loader import load_dataset
from tte_tfrs.export import export
from tte_tfrs.training import train


def train_and_export(config, output_dir, log=print):
    """Loads the data of `config`, trains, exports to `output_dir` and reports through `log`.

    Returns:
      (TrainResult, ExportResult).
    """
    dataset = load_dataset(config.data_dir, config.dataset)
    log(f"Read {dataset.name} ({dataset.layout} layout) from {dataset.source}")
    log(dataset.report.format())
    log(f"Training on {'all' if config.include_implicit else 'explicit'} ratings "
        f"(embedding_dim={config.embedding_dim}, optimizer={config.optimizer}, "
        f"learning_rate={config.learning_rate}, batch_size={config.batch_size}, "
        f"{config.regularizer} regularization={config.regularization}, seed={config.seed})")
    result = train(config, dataset)
    log(f"Splits: {result.splits.sizes()}; stopped after {result.metrics['epochs_run']} epochs "
        f"in {result.metrics['train_seconds']:.1f} s "
        f"({result.metrics['train_examples_per_second']:,} examples/s)")
    exported = export(result, output_dir)
    log(f"Exported version {exported.version} to {os.path.abspath(output_dir)}")
    log(format_metrics(result.metrics))
    return result, exported


def format_metrics(metrics):
    """A small table of the test metrics next to the global-mean baseline."""
    if "test_rmse" not in metrics:
        return f"validation RMSE {metrics['validation_rmse']:.4f} (no test split)"
    lines = [f"{'':18}{'RMSE':>8}{'MAE':>8}",
             f"{'two-tower (test)':18}{metrics['test_rmse']:8.4f}{metrics['test_mae']:8.4f}",
             f"{'global mean':18}{metrics['baseline_rmse']:8.4f}{metrics['baseline_mae']:8.4f}"]
    return "\n".join(lines)
