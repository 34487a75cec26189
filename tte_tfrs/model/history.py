"""The user-history feature: the items each user interacted with, stored inside the user tower.

SVD++'s implicit feedback as a tower feature. For every user of the training data the tower
stores (as constants of its graph, so an exported user tower needs nothing else) the rows of up
to ``max_items`` items the user interacted with; the feature's vector is

    h_u = |N(u)|^-1/2 * sum_{j in N(u)} y_j

with y_j a row of the tower's own ``history`` table (one row per item, row 0 for items it has no
row for). A known user is served by id alone; a user the tower does not know has an empty history
(zeros), so a new user is served from their other features.

`UserHistories` is built from training interactions only (`user_histories`): the training rows
and, when the data has them, implicit interactions (Book-Crossing rating 0), but never a
validation or test pair.

May import: tte_tfrs.data.features, tte_tfrs.model.bags.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from tte_tfrs.data import features
from tte_tfrs.model import bags

HISTORY = "history"


@dataclasses.dataclass(frozen=True)
class UserHistories:
    """Each user's interacted items, as row numbers of a history vocabulary.

    Attributes:
      users: user ids (canonical), in stored order.
      rows: one int64 array per user: 1-based positions in the history vocabulary (0 is the
        unknown-item row), at most ``max_items`` each, sorted.
      vocabulary: item ids with a row of their own, most frequent first.
    """

    users: tuple
    rows: tuple
    vocabulary: tuple

    def __len__(self) -> int:
        return len(self.users)


def history_vocabulary(pairs: pd.DataFrame) -> list[str]:
    """Item ids of `pairs` (columns ``user_id``, ``item_id``), most interacted with first, then by
    id: the same pairs give the same rows whatever their order."""
    counts = pairs["item_id"].astype(str).value_counts()
    frame = pd.DataFrame({"value": counts.index.astype(str), "count": counts.to_numpy()})
    frame = frame.sort_values(["count", "value"], ascending=[False, True], kind="stable")
    return frame["value"].tolist()


def user_histories(pairs: pd.DataFrame, max_items: int, seed: int,
                   vocabulary: Sequence[str] | None = None) -> UserHistories:
    """The stored histories of the users in `pairs`.

    Args:
      pairs: training interactions, columns ``user_id`` and ``item_id`` (duplicates are counted
        once).
      max_items: the most items kept per user; above it a seeded sample is kept.
      seed: the sampling seed.
      vocabulary: item ids in row order (a warm start passes the parent's, grown); None builds it
        from `pairs` (`history_vocabulary`).
    """
    pairs = pairs[["user_id", "item_id"]].astype(str).drop_duplicates()
    if vocabulary is None:
        vocabulary = history_vocabulary(pairs)
    position = pd.Series(np.arange(1, len(vocabulary) + 1, dtype=np.int64),
                         index=pd.Index(list(vocabulary), dtype=object))
    rows = pairs["item_id"].map(position).fillna(0).to_numpy(np.int64)
    users = pairs["user_id"].to_numpy()
    order = np.lexsort((rows, users))
    users, rows = users[order], rows[order]
    keys, starts = np.unique(users, return_index=True)
    ends = np.append(starts[1:], len(users))
    rng = np.random.default_rng(seed)
    kept = []
    for start, end in zip(starts, ends):
        mine = np.unique(rows[start:end])
        if len(mine) > max_items:
            mine = np.sort(rng.choice(mine, max_items, replace=False))
        kept.append(mine)
    return UserHistories(users=tuple(str(k) for k in keys), rows=tuple(kept),
                         vocabulary=tuple(vocabulary))


class HistoryEncoder(tf.keras.layers.Layer):
    """The history feature of a user tower (see the module docstring).

    Follows the encoders' split (`tte_tfrs.model.towers.LookupEncoder`): `preprocess` maps user
    ids to stored-history numbers, `rows` looks up the history's item rows (what batch-scoped J
    covers, divided by the number of items looked up), `combine` sums them scaled by 1/sqrt(n).

    Args:
      key_spec: the user id `FeatureSpec` (its normalisation applies to the ids looked up).
      histories: `UserHistories` from the training interactions.
      width: k + 1.
      regularization: ``embeddings_regularizer`` keyword (table scope) or {}.
      seed: initialisation seed.
    """

    def __init__(self, key_spec: features.FeatureSpec, histories: UserHistories, width: int,
                 regularization: dict, seed: int, **kwargs):
        super().__init__(name=f"{HISTORY}_encoder", **kwargs)
        self.key_spec = key_spec
        users = np.array(histories.users, dtype=object)
        self.keys = tf.keras.layers.StringLookup(
            vocabulary=users if len(users) else None, num_oov_indices=1, mask_token=None,
            name=f"{HISTORY}_users") if len(users) else None
        # The item lookup names the table's rows (checkpoints and warm starts read it).
        items = np.array(histories.vocabulary, dtype=object)
        self.lookup = tf.keras.layers.StringLookup(
            vocabulary=items if len(items) else None, num_oov_indices=1, mask_token=None,
            name=f"{HISTORY}_lookup") if len(items) else _EmptyVocabulary()
        sizes = np.array([0] + [len(r) for r in histories.rows], np.int64)     # key 0: unknown
        flat = np.concatenate([np.zeros(0, np.int64)] + list(histories.rows))
        self.stored = tf.RaggedTensor.from_row_lengths(tf.constant(flat), tf.constant(sizes))
        self.embedding = tf.keras.layers.Embedding(
            len(histories.vocabulary) + 1, width, name=f"{HISTORY}_embedding",
            embeddings_initializer=tf.keras.initializers.RandomNormal(
                stddev=0.05, seed=seed + zlib.crc32(HISTORY.encode())), **regularization)

    def preprocess(self, user_ids):
        if self.keys is None:
            return tf.zeros(tf.shape(user_ids), tf.int64)
        return self.keys(features.normalize_id(user_ids, self.key_spec.normalize))

    def rows(self, positions):
        return [bags.lookup_bag(self.embedding, tf.gather(self.stored, positions), "sqrt")]

    def combine(self, rows):
        return bags.bag_sum(rows[0])

    def call(self, user_ids):
        return self.combine(self.rows(self.preprocess(user_ids)))


class _EmptyVocabulary:
    def get_vocabulary(self):
        return ["[UNK]"]
