"""tte_tfrs: two-tower rating models on TensorFlow Recommenders.

    import tte_tfrs
    result = tte_tfrs.train(tte_tfrs.TrainConfig(data_dir="archive.zip"))
    tte_tfrs.export(result, "saved_models")
    tte_tfrs.build_index("saved_models")
    tte_tfrs.Recommender.load("saved_models").recommend(user_id="41", k=5)
"""

from tte_tfrs import _keras_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tte_tfrs.config import TrainConfig
from tte_tfrs.data import Dataset, load_dataset
from tte_tfrs.errors import ConfigError, DataError, TteError
from tte_tfrs.evaluation import EvaluationConfig, evaluate
from tte_tfrs.export import export
from tte_tfrs.indexing import build_index
from tte_tfrs.recommender import Recommendation, RecommendationError, Recommender
from tte_tfrs.training import TrainResult, train

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "Dataset", "EvaluationConfig", "Recommendation",
           "RecommendationError", "Recommender", "TrainConfig", "TrainResult", "TteError",
           "build_index", "evaluate", "export", "load_dataset", "train"]
