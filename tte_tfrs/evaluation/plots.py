"""PNG plots: the training curve of an export and recall@K against K."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)


def plot_training_curve(history, path):
    """Training and validation RMSE (left) and total loss (right) per epoch."""
    epochs = range(1, len(history.get("rmse", [])) + 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, label in (("rmse", "training RMSE"), ("val_rmse", "validation RMSE")):
        if key in history:
            left.plot(epochs, history[key], marker="o", label=label)
    left.set_xlabel("epoch")
    left.set_ylabel("RMSE")
    left.legend()
    for key, label in (("total_loss", "total loss (last batch)"),
                       ("regularization_loss", "regularization loss (last batch)")):
        if key in history:
            right.plot(epochs, history[key], marker="o", label=label)
    right.set_xlabel("epoch")
    right.set_yscale("log")
    right.legend()
    for axes in (left, right):
        axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_recall_curve(result, path):
    """recall@K against K from a `tte_tfrs.evaluation.evaluate` result."""
    ks = sorted(result["recall_curve"])
    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.plot(ks, [result["recall_curve"][k] for k in ks], marker="o")
    axes.set_xscale("log")
    axes.set_xlabel("K")
    axes.set_ylabel("recall@K")
    axes.set_title(f"recall@K, version {result['version']} ({result['split']} split)")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
