"""Stage 7: the index. One backend interface (exact, FAISS IVF-PQ and HNSW, ScaNN, Milvus) with one
registry and one result order, one exact scoring function (`scoring`), `ItemIndex` (backend
candidates re-ranked by that exact score, ties to the lower item id, saved beside the export),
calibration of search settings to a target recall (`calibration`), and building/refreshing an
export's indexes (`building`).
The backends import only tte_tfrs.errors, tte_tfrs.exports.reader (the JSON reader) and each other;
`building` may import tte_tfrs.exports.
"""

from tte_tfrs.retrieval.base import Backend
from tte_tfrs.retrieval.calibration import CalibrationConfig, calibrate
from tte_tfrs.retrieval.item_index import IndexMismatchError, ItemIndex, fingerprint
from tte_tfrs.retrieval.registry import BACKENDS, DEFAULT_BACKEND, get_backend, installed_backends

__all__ = ["BACKENDS", "Backend", "CalibrationConfig", "DEFAULT_BACKEND", "IndexMismatchError",
           "ItemIndex", "calibrate", "fingerprint", "get_backend", "installed_backends"]
