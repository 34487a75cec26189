"""Stage 5: fitting. The run's configuration (`TrainConfig` = data + model + trainer + scale parts),
the trainer (split, vocabularies, towers, fit with early stopping, metrics), the checkpoint a
version keeps for updates, warm starts that continue an exported version on new data, and
training beyond one process or one machine's memory: `scaled` (the same steps under a
`distributed` tf.distribute strategy and/or on `streamed` rows written to shard files).
May import: tte_tfrs.data, tte_tfrs.model, tte_tfrs.evaluation.metrics (plain numpy) and, for warm
starts, tte_tfrs.exports.reader.
"""

from tte_tfrs.training.config import DataConfig, ModelConfig, TrainConfig, TrainerConfig
from tte_tfrs.training.trainer import TrainResult, train

__all__ = ["DataConfig", "ModelConfig", "TrainConfig", "TrainResult", "TrainerConfig", "train"]
