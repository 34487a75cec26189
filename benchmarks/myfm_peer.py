"""myFM (Bayesian factorization machine, Gibbs sampling) on exactly our features.

The design matrix comes from our own towers' preprocessing (`tte_tfrs.model.towers.Tower`): every
embedding row a tower can look up (an id, a category, a location part, a number bucket, a word, a
tag, an item of a user history, a user of an item history) is one column, with the tower's
weight (1 for one-slot features, 1/n for the n words of a text, 1/sqrt(n) for a history).
Users and items are myFM relation blocks (one block row per distinct user or item), so the FM's
user x item interactions are the dot product of two summed-embedding towers, like ours, and
each of a tower's tables gets its own hyperprior (`group_shapes`).

Ranking uses the posterior samples directly: for sample s, score(u, i) = w_i . x_i + the item's
own pairwise term + <V_s^T x_u, V_s^T x_i> (+ terms constant per user, which cannot change a
ranking); averaged over samples, that is one dot product of concatenated per-sample vectors.
"""

import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
import tensorflow as tf

from tte_tfrs.data.dataset import fill_missing
from tte_tfrs.model.history import HistoryEncoder
from tte_tfrs.model.towers import LookupEncoder, NumberEncoder, TokenEncoder


def _blocks(tower):
    """[(encoder, feature name, lookup key or None, columns, weighting)] in column order."""
    out = []
    for (name, _), encoder in zip(tower.feature_inputs, tower.encoders):
        if isinstance(encoder, LookupEncoder):
            out += [(encoder, name, key, int(encoder.embeddings[key].input_dim), "one")
                    for key in sorted(encoder.lookups)]
        elif isinstance(encoder, NumberEncoder):
            out.append((encoder, name, None, int(encoder.embedding.input_dim), "one"))
        elif isinstance(encoder, TokenEncoder):
            out.append((encoder, name, None, int(encoder.embedding.input_dim), "mean"))
        elif isinstance(encoder, HistoryEncoder):
            out.append((encoder, name, None, int(encoder.embedding.input_dim), "sqrt"))
        else:
            raise TypeError(f"no design-matrix columns for {type(encoder).__name__}")
    return out


def group_shapes(tower):
    return [block[3] for block in _blocks(tower)]


def tower_matrix(tower, table, specs, batch_size=65536):
    """CSR [rows of `table`, tower columns]: each entity's looked-up rows and weights."""
    blocks = _blocks(tower)
    width = sum(b[3] for b in blocks)
    parts = []
    for start in range(0, len(table), batch_size):
        part = table.iloc[start:start + batch_size]
        inputs = {s.name: tf.constant(part[s.name].to_numpy(np.float32) if s.kind == "number"
                                      else part[s.name].to_numpy().astype(str)) for s in specs}
        pre = tower.preprocess(inputs)
        rows_, cols, vals, offset = [], [], [], 0
        for encoder, name, key, size, weighting in blocks:
            value = pre[name] if key is None else pre[name][key]
            if isinstance(encoder, HistoryEncoder):
                value = tf.gather(encoder.stored, value)
            if isinstance(value, tf.RaggedTensor):
                lengths = value.row_lengths().numpy()
                flat = value.flat_values.numpy()
                owner = np.repeat(np.arange(len(part)), lengths)
                n = np.maximum(lengths, 1).astype(np.float64)
                scale = 1 / n if weighting == "mean" else 1 / np.sqrt(n)
                w = scale[owner]
            else:
                flat = value.numpy().reshape(-1)
                owner = np.arange(len(part))
                w = np.ones(len(part))
            rows_.append(owner)
            cols.append(offset + flat.astype(np.int64))
            vals.append(w)
            offset += size
        parts.append(sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows_),
                                                           np.concatenate(cols))),
                                   shape=(len(part), width)))
    matrix = sp.vstack(parts).tocsr()
    matrix.sum_duplicates()
    return matrix


class MyFMPeer:
    """Fits myFM on rating rows whose features come from `user_tower` and `item_tower`.

    Args:
      user_tower, item_tower: untrained `Tower`s built on the peer's training rows (their
        vocabularies, and user or item histories when present, are the features).
      dataset: the `Dataset` (users and items tables).
      rank, n_iter, seed: myFM settings.
    """

    def __init__(self, user_tower, item_tower, dataset, rank=10, n_iter=200, seed=0):
        self.user_tower, self.item_tower, self.dataset = user_tower, item_tower, dataset
        self.rank, self.n_iter, self.seed = rank, n_iter, seed
        self._users, self._items = ({}, None), ({}, None)
        self.n_user_columns = sum(group_shapes(user_tower))

    def _rows(self, ids, side):
        """Block matrix rows (CSR) for `ids`; each distinct id's features are computed once."""
        ids = np.asarray(ids, dtype=object).astype(str)
        index, matrix = self._users if side == "user" else self._items
        missing = pd.unique(pd.Series(ids)[~pd.Series(ids).isin(index)])
        if len(missing):
            key = "user_id" if side == "user" else "item_id"
            source = self.dataset.users if side == "user" else self.dataset.items
            specs = self.dataset.user_features if side == "user" else self.dataset.item_features
            table = fill_missing(pd.DataFrame({key: missing}).merge(source, on=key, how="left"),
                                 specs)
            tower = self.user_tower if side == "user" else self.item_tower
            added = tower_matrix(tower, table, specs)
            index = {**index, **{m: len(index) + n for n, m in enumerate(missing)}}
            matrix = added if matrix is None else sp.vstack([matrix, added]).tocsr()
            if side == "user":
                self._users = (index, matrix)
            else:
                self._items = (index, matrix)
        return matrix[np.array([index[i] for i in ids], np.int64)]

    def _blocks(self, ratings):
        import myfm
        blocks = []
        for side, key in (("user", "user_id"), ("item", "item_id")):
            distinct, inverse = np.unique(ratings[key].astype(str).to_numpy(), return_inverse=True)
            blocks.append(myfm.RelationBlock(inverse.astype(np.int64), self._rows(distinct, side)))
        return blocks

    def fit(self, ratings):
        import myfm
        started = time.perf_counter()
        blocks = self._blocks(ratings)
        self.fm = myfm.MyFMRegressor(rank=self.rank, random_seed=self.seed)
        empty = sp.csr_matrix((len(ratings), 0), dtype=np.float64)
        self.fm.fit(empty, ratings["rating"].to_numpy(np.float64), X_rel=blocks,
                    n_iter=self.n_iter,
                    group_shapes=group_shapes(self.user_tower) + group_shapes(self.item_tower))
        self.fit_seconds = time.perf_counter() - started
        return self

    def predict(self, ratings):
        blocks = self._blocks(ratings)
        empty = sp.csr_matrix((len(ratings), 0), dtype=np.float64)
        return self.fm.predict(empty, X_rel=blocks)

    def ranking_vectors(self, user_ids, item_ids):
        """(user vectors, item vectors) whose dot products rank items like the posterior mean."""
        xu, xi = self._rows(user_ids, "user"), self._rows(item_ids, "item")
        n_user_columns = self.n_user_columns
        w = self.fm.w_samples                      # [S, features]
        V = self.fm.V_samples                      # [S, features, rank]
        samples = len(w)
        user_parts, item_parts, item_scalar = [], [], np.zeros(len(item_ids))
        for s in range(samples):
            vu, vi = V[s, :n_user_columns], V[s, n_user_columns:]
            pu, qi = xu @ vu, xi @ vi
            own = 0.5 * (np.sum(qi ** 2, axis=1) - xi.multiply(xi) @ np.sum(vi ** 2, axis=1))
            item_scalar += xi @ w[s, n_user_columns:] + own
            user_parts.append(pu / samples)
            item_parts.append(qi)
        user_vectors = np.hstack(user_parts + [np.ones((len(user_ids), 1))])
        item_vectors = np.hstack(item_parts + [item_scalar[:, None] / samples])
        return user_vectors.astype(np.float32), item_vectors.astype(np.float32)
