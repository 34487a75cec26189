"""Stage 1-3 of the flow: files -> validated tables -> tf.data.

Owns the readers of every supported layout (Kaggle and original Book-Crossing, MovieLens 100K), the
cleaning and counting of every decision (`DataReport`), the feature schema shared by readers,
towers and serving (`features`), the seeded splits, the tf.data pipelines, the synthetic data
generator, and `streaming` (the same readers a chunk at a time, ratings kept on disk; rows in
TFRecord block files). May import: tte_tfrs.errors (and TensorFlow for the shared string standardisation).
"""

from tte_tfrs.data.dataset import Dataset
from tte_tfrs.data.loader import DATASETS, DEFAULT_DATA_DIR, load_dataset
from tte_tfrs.data.report import DataReport, FileReport

__all__ = ["DATASETS", "DEFAULT_DATA_DIR", "DataReport", "Dataset", "FileReport", "load_dataset"]
