"""Stage 7: the index. One backend interface (exact, FAISS IVF-PQ and HNSW, ScaNN) with one
registry and one result order, `ItemIndex` (backend candidates re-ranked by exact dot product,
ties to the lower item id, saved beside the export), and building/refreshing an export's indexes.
The backends import nothing from the package; `building` may import tte_tfrs.exports.
"""

from tte_tfrs.retrieval.base import Backend
from tte_tfrs.retrieval.item_index import IndexMismatchError, ItemIndex, fingerprint
from tte_tfrs.retrieval.registry import BACKENDS, DEFAULT_BACKEND, get_backend, installed_backends

__all__ = ["BACKENDS", "Backend", "DEFAULT_BACKEND", "IndexMismatchError", "ItemIndex",
           "fingerprint", "get_backend", "installed_backends"]
