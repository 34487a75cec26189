"""Reading, validating, splitting and streaming rating data."""

from tte_tfrs.data.dataset import Dataset
from tte_tfrs.data.loader import DATASETS, DEFAULT_DATA_DIR, load_dataset
from tte_tfrs.data.report import DataReport, FileReport

__all__ = ["DATASETS", "DEFAULT_DATA_DIR", "DataReport", "Dataset", "FileReport", "load_dataset"]
