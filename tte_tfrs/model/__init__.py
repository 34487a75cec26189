"""Stage 4: the model. Vocabularies from training columns, the user and item towers (raw features
in, one embedding out, preprocessing included) and the tfrs model whose predicted rating is their
dot product. Knows nothing about files or exports. May import: tte_tfrs.data.features.
"""

from tte_tfrs.model.towers import ITEM, USER, Tower
from tte_tfrs.model.two_tower import RATING, TwoTowerRatingModel
from tte_tfrs.model.vocabulary import build_vocabularies

__all__ = ["ITEM", "RATING", "USER", "Tower", "TwoTowerRatingModel", "build_vocabularies"]
