"""Flags that several scripts share, defined once so the scripts can live in one process."""

from absl import app, flags, logging

from tte_tfrs.data.loader import DATASETS
from tte_tfrs.retrieval import BACKENDS, DEFAULT_BACKEND

OUTPUT_DIR = flags.DEFINE_string("output_dir", "saved_models",
                                 "Export root (TF Serving layout) written by tte-train.")
BACKEND = flags.DEFINE_enum("backend", DEFAULT_BACKEND, list(BACKENDS), "Retrieval backend.")
K = flags.DEFINE_integer("k", 10, "How many items per user (tte-recommend), or the list length of "
                         "the top-K metrics (tte-evaluate).")
DATA_DIR = flags.DEFINE_string("data_dir", None,
                               "Data folder or zip archive. tte-train: default the embedded data; "
                               "tte-evaluate: default the data the export was trained on.")
DATASET = flags.DEFINE_enum("dataset", "auto", list(DATASETS),
                            "Data layout; auto detects it from the file names.")


def start(argv):
    """Common start of every script's main: refuse stray arguments, quiet TensorFlow's logging."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
