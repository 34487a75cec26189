"""tte_tfrs: two-tower rating models on TensorFlow Recommenders.

    import tte_tfrs
    result = tte_tfrs.train(tte_tfrs.TrainConfig(data_dir="archive.zip"))
    tte_tfrs.export(result, "saved_models")
    tte_tfrs.build_index("saved_models")
    tte_tfrs.Recommender.load("saved_models").recommend(user_id="41", k=5)

The subpackages follow the data flow: `data` (files -> validated tables -> tf.data), `model`
(towers, the two-tower model), `training` (config, fit, checkpoints, warm starts), `exports`
(writer, reader, lifecycle of export folders), `retrieval` (ANN backends, `ItemIndex`), `serving`
(`Recommender`), `evaluation` (metrics, evaluate, plots); `workflows` chains them and `scripts`
holds the command-line entry points.
"""

from tte_tfrs import _keras_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tte_tfrs.data import Dataset, load_dataset
from tte_tfrs.errors import ConfigError, DataError, ExportError, TteError
from tte_tfrs.evaluation import EvaluationConfig, evaluate
from tte_tfrs.exports import ExportReader, export
from tte_tfrs.retrieval.building import build_index
from tte_tfrs.serving import Recommendation, RecommendationError, Recommender
from tte_tfrs.training import TrainConfig, TrainResult, train
from tte_tfrs.workflows import train_and_export, update_and_export

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "Dataset", "EvaluationConfig", "ExportError",
           "ExportReader", "Recommendation", "RecommendationError", "Recommender", "TrainConfig",
           "TrainResult", "TteError", "build_index", "evaluate", "export", "load_dataset", "train",
           "train_and_export", "update_and_export"]
