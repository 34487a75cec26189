"""tte-evaluate: rating errors and top-K quality of an export on its held-out split.

Examples:
  tte-evaluate --k=10 --json=eval.json --plot=recall.png
  tte-evaluate --output_dir=/tmp/ml --relevance_threshold=4
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from absl import flags

from tte_tfrs import paths
from tte_tfrs.errors import ConfigError
from tte_tfrs.evaluation.evaluate import EvaluationConfig, evaluate
from tte_tfrs.evaluation.plots import plot_recall_curve
from tte_tfrs.scripts import cli

PROGRAM = "tte-evaluate"
RENAMED = {"split": "eval_split"}       # --split means the training split in tte-train


def define_flags(values: flags.FlagValues) -> None:
    cli.define_config_flags(values, EvaluationConfig, rename=RENAMED)
    flags.DEFINE_string("json", None, "Write the results here as JSON.", flag_values=values)
    flags.DEFINE_string("plot", None, "Save recall@K against K here as a PNG.", flag_values=values)


def format_result(result: dict) -> str:
    lines = [f"{'held-out ratings':22}{result['rows']:>10,}",
             f"{'RMSE / MAE':22}{result['rmse']:>10.4f}{result['mae']:>10.4f}",
             f"{'global mean RMSE / MAE':22}{result['baseline_rmse']:>10.4f}"
             f"{result['baseline_mae']:>10.4f}",
             f"top-{result['k']} over {result['users_evaluated']:,} users with a held-out rating "
             f">= {result['relevance_threshold']:g} ({result['backend']} search):"]
    for name in ("recall", "precision", "ndcg", "hit_rate", "mrr", "coverage"):
        key = f"{name}@{result['k']}"
        lines.append(f"  {key:20}{result[key]:>10.4f}")
    lines.append("  recall curve: " + ", ".join(f"@{k} {v:.4f}"
                                                for k, v in result["recall_curve"].items()))
    return "\n".join(lines)


def main(values: flags.FlagValues) -> int:
    # Checked before the evaluation runs, not after.
    json_path = paths.writable_file(values.json, "json") if values.json is not None else None
    plot_path = paths.writable_file(values.plot, "plot") if values.plot is not None else None
    if json_path and plot_path and os.path.abspath(json_path) == os.path.abspath(plot_path):
        raise ConfigError("--json and --plot name the same file", field="plot")
    settings = cli.config_values(values, EvaluationConfig, rename=RENAMED)
    result = evaluate(EvaluationConfig(**settings))
    if plot_path:
        plot_recall_curve(result, plot_path)
    print(format_result(result))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """The ``tte-evaluate`` console script; returns the exit code."""
    return cli.run(PROGRAM, __doc__, define_flags, main, argv, aliases={"split": "eval_split"})


if __name__ == "__main__":
    sys.exit(run())
