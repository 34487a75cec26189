"""Retrieval: one backend interface (exact, FAISS IVF-PQ and HNSW, ScaNN), exact re-ranking."""

from tte_tfrs.retrieval.base import Backend
from tte_tfrs.retrieval.index import IndexMismatchError, ItemIndex, fingerprint
from tte_tfrs.retrieval.registry import BACKENDS, DEFAULT_BACKEND, get_backend, installed_backends

__all__ = ["BACKENDS", "Backend", "DEFAULT_BACKEND", "IndexMismatchError", "ItemIndex",
           "fingerprint", "get_backend", "installed_backends"]
