"""Measuring: rating and top-K metrics (plain numpy), the evaluation of an export on its own
held-out split, and plots. May import: tte_tfrs.data, tte_tfrs.training.config,
tte_tfrs.exports.reader, tte_tfrs.serving. `metrics` and `plots` import nothing from the package,
so earlier stages may use them.
"""

from tte_tfrs.evaluation.evaluate import EvaluationConfig, evaluate

__all__ = ["EvaluationConfig", "evaluate"]
