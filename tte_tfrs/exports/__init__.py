"""Stage 6: export folders. The layout's names, the writer (SavedModels TF Serving loads, item
embeddings, users, checkpoint, manifest; staged and renamed into place), the one validating reader
every consumer uses, and the lifecycle (writer lock, versions, rollback, pruning, repair).
May import: tte_tfrs.data, tte_tfrs.training (results and checkpoints), tte_tfrs.evaluation.plots.
The reader imports nothing but the layout, tte_tfrs.ids and errors (no TensorFlow).
"""

from tte_tfrs.exports.reader import (
    ExportReader,
    ItemTable,
    RatedItems,
    VersionGoneError,
    read_consistent,
    read_manifest,
)
from tte_tfrs.exports.writer import ExportResult, export

__all__ = ["ExportReader", "ExportResult", "ItemTable", "RatedItems", "VersionGoneError", "export",
           "read_consistent", "read_manifest"]
