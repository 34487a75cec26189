"""Selects Keras 2 (tf-keras) before TensorFlow is imported: tfrs 0.7.7 needs it."""

import os
import sys
import warnings

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    warnings.warn(
        "TensorFlow was imported before tte_tfrs without TF_USE_LEGACY_KERAS=1; "
        "tensorflow-recommenders needs Keras 2. Import tte_tfrs first, or export "
        "TF_USE_LEGACY_KERAS=1 before starting Python.",
        RuntimeWarning,
        stacklevel=2,
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
