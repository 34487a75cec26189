"""tte-evaluate: rating errors and top-K quality of an export on its held-out split.

Example:
  tte-evaluate --k=10 --json=eval.json --plot=recall.png
  tte-evaluate --output_dir=/tmp/ml --relevance_threshold=4
"""

import json
import sys

from absl import app, flags

from tte_tfrs.errors import TteError
from tte_tfrs.evaluation import EvaluationConfig, evaluate
from tte_tfrs.plots import plot_recall_curve
from tte_tfrs.scripts import shared_flags  # shared flags --output_dir, --backend and start()

flags.DEFINE_enum("eval_split", "test", ["test", "validation"],
                 "Held-out rows of the export's own split to score.")
flags.DEFINE_list("ks", ["1", "5", "10", "20", "50", "100"], "List lengths for the recall curve.")
flags.DEFINE_float("relevance_threshold", None,
                   "Held-out ratings at least this high are relevant (default 8 on 0-10, 4 on 1-5).")
flags.DEFINE_integer("max_users", 5000, "Most users for the top-K metrics (seeded sample).")
flags.DEFINE_string("json", None, "Write the results here as JSON.")
flags.DEFINE_string("plot", None, "Save recall@K against K here as a PNG.")
FLAGS = flags.FLAGS


def format_result(result):
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


def main(argv):
    shared_flags.start(argv)
    try:
        config = EvaluationConfig(
            output_dir=FLAGS.output_dir, data_dir=FLAGS.data_dir, dataset=FLAGS.dataset,
            split=FLAGS.eval_split, k=FLAGS.k, ks=tuple(int(k) for k in FLAGS.ks),
            relevance_threshold=FLAGS.relevance_threshold, backend=FLAGS.backend,
            max_users=FLAGS.max_users)
        result = evaluate(config)
        if FLAGS.plot:
            plot_recall_curve(result, FLAGS.plot)
    except (TteError, ValueError, OSError) as exc:
        print(f"tte-evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(format_result(result))
    if FLAGS.json:
        with open(FLAGS.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
