"""Stage 8: answers. The `Recommender` (user tower -> index candidates -> exact dot products -> top k)
over one exported version. May import: tte_tfrs.exports.reader, tte_tfrs.retrieval.
"""

from tte_tfrs.serving.recommender import Recommendation, RecommendationError, Recommender, UserQuery

__all__ = ["Recommendation", "RecommendationError", "Recommender", "UserQuery"]
