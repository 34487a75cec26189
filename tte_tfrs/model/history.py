"""The history features: the items each user interacted with, stored inside the user tower, and
the users who interacted with each item, stored inside the item tower.

SVD++'s implicit feedback as a tower feature, on either side. For every user of the training data
the user tower stores (as constants of its graph, so an exported tower needs nothing else) the
rows of up to ``max_size`` items the user interacted with; the feature's vector is

    h_u = |N(u)|^-1/2 * sum_{j in N(u)} y_j

with y_j a row of the tower's own ``history`` table (one row per item, row 0 for items it has no
row for). The item tower's ``item_history`` is the mirror image: h_i = |N(i)|^-1/2 * sum over the
users u who interacted with item i of z_u, z_u a row of its own table of users. A known user or
item is served by id alone; one the tower does not know has an empty history (zeros), so it is
served from its other features.

`Histories` are built from training interactions only (`user_histories`, `item_histories`): the
training rows and, when the data has them, implicit interactions (Book-Crossing rating 0), but
never a validation or test pair.

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

HISTORY = "history"                # the user tower's feature: each user's items
ITEM_HISTORY = "item_history"      # the item tower's feature: each item's users
# The layer that maps a tower's own ids to stored histories, per feature.
_KEY_LAYERS = {HISTORY: f"{HISTORY}_users", ITEM_HISTORY: f"{ITEM_HISTORY}_items"}


@dataclasses.dataclass(frozen=True)
class Histories:
    """Each key's interactions, as row numbers of a history vocabulary.

    Attributes:
      keys: the tower's own ids (canonical), in stored order: user ids for the user history,
        item ids for the item history.
      rows: one int64 array per key: 1-based positions in the history vocabulary (0 is the
        unknown row), at most ``max_size`` each, sorted.
      vocabulary: the other side's ids with a row of their own (items for the user history,
        users for the item history), most frequent first.
    """

    keys: tuple
    rows: tuple
    vocabulary: tuple

    def __len__(self) -> int:
        return len(self.keys)


def history_vocabulary(pairs: pd.DataFrame, column: str = "item_id") -> list[str]:
    """Ids of `column` in `pairs` (columns ``user_id``, ``item_id``), most interacted with first,
    then by id: the same pairs give the same rows whatever their order. ``item_id`` gives the
    user history's vocabulary, ``user_id`` the item history's."""
    counts = pairs[column].astype(str).value_counts()
    frame = pd.DataFrame({"value": counts.index.astype(str), "count": counts.to_numpy()})
    frame = frame.sort_values(["count", "value"], ascending=[False, True], kind="stable")
    return frame["value"].tolist()


def user_histories(pairs: pd.DataFrame, max_size: int, seed: int,
                   vocabulary: Sequence[str] | None = None) -> Histories:
    """The stored histories of the users in `pairs`: each user's items.

    Args:
      pairs: training interactions, columns ``user_id`` and ``item_id`` (duplicates are counted
        once).
      max_size: the most items kept per user; above it a seeded sample is kept.
      seed: the sampling seed.
      vocabulary: item ids in row order (a warm start passes the parent's, grown); None builds it
        from `pairs` (`history_vocabulary`).
    """
    return _histories(pairs, "user_id", "item_id", max_size, seed, vocabulary)


def item_histories(pairs: pd.DataFrame, max_size: int, seed: int,
                   vocabulary: Sequence[str] | None = None) -> Histories:
    """The stored histories of the items in `pairs`: each item's users (as `user_histories`, the
    sides swapped; `vocabulary` holds user ids)."""
    return _histories(pairs, "item_id", "user_id", max_size, seed, vocabulary)


def _histories(pairs, key_column, value_column, max_size, seed, vocabulary):
    pairs = pairs[["user_id", "item_id"]].astype(str).drop_duplicates()
    if vocabulary is None:
        vocabulary = history_vocabulary(pairs, value_column)
    position = pd.Series(np.arange(1, len(vocabulary) + 1, dtype=np.int64),
                         index=pd.Index(list(vocabulary), dtype=object))
    rows = pairs[value_column].map(position).fillna(0).to_numpy(np.int64)
    owners = pairs[key_column].to_numpy()
    order = np.lexsort((rows, owners))
    owners, rows = owners[order], rows[order]
    keys, starts = np.unique(owners, return_index=True)
    ends = np.append(starts[1:], len(owners))
    rng = np.random.default_rng(seed)
    kept = []
    for start, end in zip(starts, ends):
        mine = np.unique(rows[start:end])
        if len(mine) > max_size:
            mine = np.sort(rng.choice(mine, max_size, replace=False))
        kept.append(mine)
    return Histories(keys=tuple(str(k) for k in keys), rows=tuple(kept),
                     vocabulary=tuple(vocabulary))


class HistoryEncoder(tf.keras.layers.Layer):
    """A history feature of a tower (see the module docstring).

    Follows the encoders' split (`tte_tfrs.model.towers.LookupEncoder`): `preprocess` maps the
    tower's ids to stored-history numbers, `rows` looks up the history's rows (what batch-scoped
    J covers, divided by the number of rows looked up), `combine` sums them scaled by 1/sqrt(n).

    Args:
      key_spec: the tower's id `FeatureSpec` (its normalisation applies to the ids looked up).
      histories: `Histories` from the training interactions.
      width: k + 1 (per ensemble member).
      regularization: ``embeddings_regularizer`` keyword (table scope) or {}.
      seed: initialisation seed.
      feature: `HISTORY` (a user tower's) or `ITEM_HISTORY` (an item tower's): the feature's name,
        its vocabulary's name and its layers' prefix.
    """

    def __init__(self, key_spec: features.FeatureSpec, histories: Histories, width: int,
                 regularization: dict, seed: int, feature: str = HISTORY, **kwargs):
        if feature not in _KEY_LAYERS:
            raise ValueError(f"feature must be one of {sorted(_KEY_LAYERS)}, got {feature!r}")
        super().__init__(name=f"{feature}_encoder", **kwargs)
        self.feature = feature
        self.key_spec = key_spec
        keys = np.array(histories.keys, dtype=object)
        self.keys = tf.keras.layers.StringLookup(
            vocabulary=keys if len(keys) else None, num_oov_indices=1, mask_token=None,
            name=_KEY_LAYERS[feature]) if len(keys) else None
        # The vocabulary lookup names the table's rows (checkpoints and warm starts read it).
        values = np.array(histories.vocabulary, dtype=object)
        self.lookup = tf.keras.layers.StringLookup(
            vocabulary=values if len(values) else None, num_oov_indices=1, mask_token=None,
            name=f"{feature}_lookup") if len(values) else _EmptyVocabulary()
        sizes = np.array([0] + [len(r) for r in histories.rows], np.int64)     # key 0: unknown
        flat = np.concatenate([np.zeros(0, np.int64)] + list(histories.rows))
        self.stored = tf.RaggedTensor.from_row_lengths(tf.constant(flat), tf.constant(sizes))
        self.embedding = tf.keras.layers.Embedding(
            len(histories.vocabulary) + 1, width, name=f"{feature}_embedding",
            embeddings_initializer=tf.keras.initializers.RandomNormal(
                stddev=0.05, seed=seed + zlib.crc32(feature.encode())), **regularization)

    def preprocess(self, ids):
        if self.keys is None:
            return tf.zeros(tf.shape(ids), tf.int64)
        return self.keys(features.normalize_id(ids, self.key_spec.normalize))

    def rows(self, positions):
        return [bags.lookup_bag(self.embedding, tf.gather(self.stored, positions), "sqrt")]

    def combine(self, rows):
        return bags.bag_sum(rows[0])

    def call(self, ids):
        return self.combine(self.rows(self.preprocess(ids)))


class _EmptyVocabulary:
    def get_vocabulary(self):
        return ["[UNK]"]
