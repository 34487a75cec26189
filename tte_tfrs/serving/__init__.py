"""Stage 8: answers. The `Recommender` (user tower -> index candidates -> exact dot products -> top k)
over one exported version. May import: tte_tfrs.exports.reader, tte_tfrs.retrieval.

`tte-serve` (the ``serve`` extra: FastAPI, uvicorn, prometheus-client) lives beside it and is not
imported here: `config` (ServeConfig), `versions` (VersionManager: follows the export folder's
current version, loads in the background, swaps atomically), `batching` (MicroBatcher), `metrics`
(Prometheus), `http` (the FastAPI app).
"""

from tte_tfrs.serving.recommender import Recommendation, RecommendationError, Recommender, UserQuery

__all__ = ["Recommendation", "RecommendationError", "Recommender", "UserQuery"]
