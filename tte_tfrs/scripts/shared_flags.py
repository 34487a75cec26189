"""Flags that several scripts share, defined once so the scripts can live in one process."""

from absl import flags

from tte_tfrs.retrieval import BACKENDS, DEFAULT_BACKEND

OUTPUT_DIR = flags.DEFINE_string("output_dir", "saved_models",
                                 "Export root (TF Serving layout) written by tte-train.")
BACKEND = flags.DEFINE_enum("backend", DEFAULT_BACKEND, list(BACKENDS), "Retrieval backend.")
