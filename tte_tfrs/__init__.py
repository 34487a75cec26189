"""tte_tfrs: two-tower rating models on TensorFlow Recommenders."""

from tte_tfrs import _keras_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tte_tfrs.data import Dataset, load_dataset
from tte_tfrs.errors import ConfigError, DataError, TteError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "Dataset", "TteError", "load_dataset"]
