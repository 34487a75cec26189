"""User and item towers: raw features in, one embedding out, preprocessing included.

Each feature is encoded to a (k + 1)-vector: k latent dimensions and one bias. A tower sums its
features' vectors (or runs them through ReLU layers when ``hidden_units`` is set) and folds the bias
into extra dimensions so that the plain dot product of a user and an item embedding is

    <u, v> = <latent_u, latent_i> + (b_u + mu) * 1 + 1 * b_i

i.e. the predicted rating with global mean mu and user and item biases, and an ANN index over item
embeddings ranks by predicted rating.

J comes in two scopes. ``table``: Keras weight regularizers on every table and kernel (J of every
row, every step). ``batch``: J of the embedding rows a batch looks up, computed explicitly by
`Tower.embed_with_penalty` during training only, so serving graphs hold no regularizer and the
computation is deterministic (Keras' activity-regularizer path was not: it made same-seed training
differ in the last bits about one run in eight).

A user tower may also hold the user-history feature (`tte_tfrs.model.history`): the items each
training user interacted with, stored in the tower and looked up by user id.

May import: tte_tfrs.data.features, tte_tfrs.model.bags, tte_tfrs.model.history.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import filelock
import numpy as np
import tensorflow as tf

from tte_tfrs.data import features
from tte_tfrs.model import bags
from tte_tfrs.model.history import HISTORY, ITEM_HISTORY, Histories, HistoryEncoder

USER = "user"
ITEM = "item"


REGULARIZATION_SCOPES = ("table", "batch")


def make_regularizer(kind: str, strength: float) -> tf.keras.regularizers.Regularizer | None:
    """The Keras regularizer for J: ``l1`` or ``l2`` with strength gamma (None when gamma is 0)."""
    if strength == 0:
        return None
    return tf.keras.regularizers.L1(strength) if kind == "l1" else tf.keras.regularizers.L2(strength)


def _as_array(vocabulary):
    # A numpy array, not a list: Keras walks list attributes of layers (as tracked data structures)
    # each time the model's weights are listed, which took seconds per call for 160k-id tables.
    return np.array(vocabulary, dtype=object) if len(vocabulary) else None


class UnknownOnlyLookup(tf.keras.layers.Layer):
    """The lookup of an empty vocabulary (e.g. no users file, so no locations): every value is
    unknown (row 0). Keras' StringLookup refuses an empty vocabulary."""

    def get_vocabulary(self):
        return ["[UNK]"]

    def call(self, inputs):
        if isinstance(inputs, tf.RaggedTensor):
            return inputs.with_flat_values(tf.zeros(tf.shape(inputs.flat_values), tf.int64))
        return tf.zeros(tf.shape(inputs), tf.int64)


def _vocabulary_values(lookup):
    """A lookup's values in row order, the unknown slot left out: its vocabulary file's lines (read
    a value at a time, never a list), or the vocabulary it was built with (its table is static),
    else read back from the table (which builds an index -> value dict)."""
    given = getattr(lookup, "input_vocabulary", None)
    if isinstance(given, str):
        return read_vocabulary_file(given)
    if isinstance(given, np.ndarray) and len(given) + 1 == lookup.vocabulary_size():
        return [str(v) for v in given]
    return [str(v) for v in lookup.get_vocabulary()[1:]]


def read_vocabulary_file(path):
    """The values of a vocabulary file (`write_vocabulary_file`), one at a time, in row order."""
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            yield line[:-1]


def write_vocabulary_file(vocabulary, path):
    """Writes `vocabulary` one value a line (UTF-8, ``\\n`` line ends), the file Keras'
    `StringLookup(vocabulary=path)` reads: line n is row n + 1. Returns False, writing nothing,
    when a value cannot be a line of that file (a line break, or text that is not valid Unicode):
    such a vocabulary stays in memory."""
    try:
        data = "".join(f"{value}\n" for value in vocabulary).encode("utf-8")
    except UnicodeEncodeError:
        return False
    if data.count(b"\n") != len(vocabulary) or b"\r" in data:
        return False
    with open(path, "wb") as f:
        f.write(data)
    return True


VOCABULARY_FOLDER = "tte-vocabularies-"     # + side: a tower's vocabulary files
OWNER_LOCK = ".owner.lock"      # in each such folder, locked by the process that uses it
# A lock file younger than this may be between its creation and its locking: never deleted.
_SETUP_SECONDS = 5.0


def vocabulary_folder(side):
    """(a new temporary folder for a tower's vocabulary files, the lock that marks it in use).

    The folder holds an OS file lock (`filelock`) for as long as the returned lock object lives,
    so it is in use exactly while a process holds that lock, whatever PID namespace or machine
    sharing the folder it runs in. Folders whose lock nobody holds (left by a killed process, as
    a multi-worker cluster's preempted worker is) are deleted first."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        if name.startswith(VOCABULARY_FOLDER):
            _delete_if_abandoned(os.path.join(root, name))
    folder = tempfile.mkdtemp(prefix=f"{VOCABULARY_FOLDER}{side}-")
    lock = filelock.FileLock(os.path.join(folder, OWNER_LOCK), timeout=0)
    lock.acquire()
    return folder, lock


def _delete_if_abandoned(folder):
    path = os.path.join(folder, OWNER_LOCK)
    try:
        if time.time() - os.stat(path).st_mtime < _SETUP_SECONDS:
            return
        probe = filelock.FileLock(path, timeout=0)
        probe.acquire()
    except (OSError, filelock.Timeout):         # no lock file yet, not ours to read, or in use
        return
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        probe.release()


def _release_and_delete(lock, folder):
    shutil.rmtree(folder, ignore_errors=True)
    lock.release()


def make_lookup(vocabulary, name, path=None):
    """A string lookup with one out-of-vocabulary slot (row 0) and the vocabulary after it.

    With a `path`, the vocabulary is written there as a file and the lookup's table is filled
    from it in C++: the lookup holds no Python strings, and a SavedModel of it keeps the file as
    an asset (``assets/<file name>``) instead of a string constant in its graph (a fraction of
    the memory to save and to load)."""
    if not len(vocabulary):
        return UnknownOnlyLookup(name=name)
    if path is not None:
        if write_vocabulary_file(vocabulary, path):
            return tf.keras.layers.StringLookup(vocabulary=path, num_oov_indices=1,
                                                mask_token=None, name=name)
    return tf.keras.layers.StringLookup(vocabulary=_as_array(vocabulary), num_oov_indices=1,
                                        mask_token=None, name=name)


def _initializer(seed, name, stddev=0.05):
    # A seed per table keeps initial values independent of layer creation order.
    return tf.keras.initializers.RandomNormal(stddev=stddev, seed=seed + zlib.crc32(name.encode()))


class LookupEncoder(tf.keras.layers.Layer):
    """Ids and categories: a string lookup with one out-of-vocabulary slot, then an embedding.

    Every encoder splits its work the same way: `preprocess` (strings -> integers, run once per
    data set in training), `rows` (the embedding rows looked up, which batch-scoped J covers) and
    `combine` (rows -> one (k + 1)-vector per example).
    """

    def __init__(self, spec, vocabularies, width, regularization, seed, files=None, **kwargs):
        super().__init__(name=f"{spec.name}_encoder", **kwargs)
        self.spec = spec
        self.lookups = {}
        self.embeddings = {}
        for key, vocabulary in sorted(vocabularies.items()):
            safe = key.replace("/", "_")
            self.lookups[key] = make_lookup(vocabulary, f"{safe}_lookup",
                                            None if files is None else f"{files}{safe}.txt")
            self.embeddings[key] = tf.keras.layers.Embedding(
                len(vocabulary) + 1, width, embeddings_initializer=_initializer(seed, key),
                **regularization, name=f"{safe}_embedding")

    def preprocess(self, values):
        standardized = features.standardize_strings(self.spec, values)
        return {key: self.lookups[key](standardized[key]) for key in sorted(self.lookups)}

    def rows(self, indices):
        return [self.embeddings[key](indices[key]) for key in sorted(self.lookups)]

    def combine(self, rows):
        return tf.add_n(rows)

    def call(self, values):
        return self.combine(self.rows(self.preprocess(values)))


class NumberEncoder(tf.keras.layers.Layer):
    """Numbers: bucketised by the spec's boundaries; missing or out-of-range values share bucket 0."""

    def __init__(self, spec, width, regularization, seed, **kwargs):
        super().__init__(name=f"{spec.name}_encoder", **kwargs)
        self.spec = spec
        self.buckets = tf.keras.layers.Discretization(bin_boundaries=list(spec.boundaries[:-1]),
                                                      name=f"{spec.name}_buckets")
        self.embedding = tf.keras.layers.Embedding(
            len(spec.boundaries), width, embeddings_initializer=_initializer(seed, spec.name),
            **regularization, name=f"{spec.name}_embedding")

    def preprocess(self, values):
        clean = features.sanitize_number(tf.cast(values, tf.float32), self.spec.boundaries)
        return self.buckets(clean)

    def rows(self, buckets):
        return [self.embedding(buckets)]

    def combine(self, rows):
        return rows[0]

    def call(self, values):
        return self.combine(self.rows(self.preprocess(values)))


class TokenEncoder(tf.keras.layers.Layer):
    """Text and tags: the mean embedding of the words (or labels); no words gives zeros."""

    def __init__(self, spec, vocabulary, width, regularization, seed, files=None, **kwargs):
        super().__init__(name=f"{spec.name}_encoder", **kwargs)
        self.spec = spec
        self.tokenize = features.text_tokens if spec.kind == "text" else features.tag_tokens
        self.lookup = make_lookup(vocabulary, f"{spec.name}_lookup",
                                  None if files is None else f"{files}{spec.name}.txt")
        self.embedding = tf.keras.layers.Embedding(
            len(vocabulary) + 1, width, embeddings_initializer=_initializer(seed, spec.name),
            **regularization, name=f"{spec.name}_embedding")

    def preprocess(self, values):
        return self.lookup(self.tokenize(values))

    def rows(self, token_ids):
        return [bags.lookup_bag(self.embedding, token_ids, "mean")]

    def combine(self, rows):
        return bags.bag_sum(rows[0])

    def call(self, values):
        return self.combine(self.rows(self.preprocess(values)))


def make_encoder(spec, vocabularies, width, regularization, seed, files=None):
    """The encoder of `spec`; `files`, when given, is the path prefix of its vocabulary files."""
    if spec.kind == "number":
        return NumberEncoder(spec, width, regularization, seed)
    if spec.kind in ("text", "tags"):
        return TokenEncoder(spec, vocabularies.get(spec.name, []), width, regularization, seed,
                            files)
    keys = [spec.name] if spec.kind != "location" else [f"{spec.name}/country",
                                                         f"{spec.name}/state"]
    return LookupEncoder(spec, {k: vocabularies.get(k, []) for k in keys}, width, regularization,
                         seed, files)


class Tower(tf.keras.Model):
    """Maps a dict of raw features to an embedding of size latent_dim + 2 (biases folded in).

    Args:
      specs: the tower's `FeatureSpec`s.
      vocabularies: from `build_vocabularies`.
      latent_dim: k.
      side: ``user`` (embedding ``[latent, b_u + mu, 1]``) or ``item`` (``[latent, 1, b_i]``).
      regularizer: Keras regularizer for every embedding table and kernel (or None).
      regularization_scope: ``table`` (a weight regularizer on every table) or ``batch`` (J of the
        rows each batch looks up, from `embed_with_penalty`); kernels of hidden layers are always
        regularised whole.
      hidden_units: optional ReLU layer sizes applied to the concatenated feature vectors.
      global_mean: initial mu (user side only; trained with the rest).
      seed: initialisation seed.
      histories: `Histories` of the tower's side: adds the history feature (`HISTORY` to a user
        tower, `ITEM_HISTORY` to an item tower), looked up by the first spec (the tower's id).
      members: M, an ensemble of M independently initialised models in the same tables (each
        row holds M blocks of k + 1 values). `embed` folds them into one vector,
        user ``[latent_1/M, ..., latent_M/M, mean_m(b_u,m + mu_m), 1]`` and item
        ``[latent_1, ..., latent_M, 1, mean_m(b_i,m)]``, whose dot product is the mean of the
        members' predicted ratings; `members_with_penalty` gives each member's own embedding
        ``[B, M, k + 2]`` for training. Not with hidden_units.
      vocabulary_files: keep each vocabulary in a file (``<side>.<name>.txt`` in a temporary
        folder the tower deletes when it goes, `vocabulary_folder`) that its lookup reads: no
        Python string per value in memory, and SavedModels keep the files as assets. Leave it
        off for towers built under a `tf.distribute` strategy, whose workers need not share this
        machine's files.
    """

    def __init__(self, specs: Sequence[features.FeatureSpec],
                 vocabularies: Mapping[str, Sequence[str]], latent_dim: int, side: str,
                 regularizer: tf.keras.regularizers.Regularizer | None = None,
                 hidden_units: Sequence[int] = (), global_mean: float = 0.0, seed: int = 0,
                 regularization_scope: str = "table", histories: Histories | None = None,
                 members: int = 1, vocabulary_files: bool = False, **kwargs: Any):
        super().__init__(name=f"{side}_tower", **kwargs)
        if side not in (USER, ITEM):
            raise ValueError(f"side must be {USER!r} or {ITEM!r}, got {side!r}")
        if regularization_scope not in REGULARIZATION_SCOPES:
            raise ValueError(f"regularization scope must be one of {REGULARIZATION_SCOPES}, got "
                             f"{regularization_scope!r}")
        self.specs = tuple(specs)
        self.latent_dim = int(latent_dim)
        self.members = int(members)
        if self.members < 1 or (self.members > 1 and hidden_units):
            raise ValueError("members must be >= 1, and 1 with hidden units")
        width = self.members * (latent_dim + 1)
        self.side = side
        # Batch scope: J of the looked-up rows, computed by embed_with_penalty (training only).
        self.row_regularizer = regularizer if regularization_scope == "batch" else None
        regularization = {"embeddings_regularizer": regularizer} if regularization_scope == "table" else {}
        files = None
        if vocabulary_files:
            folder, lock = vocabulary_folder(side)
            weakref.finalize(self, _release_and_delete, lock, folder)
            files = os.path.join(folder, f"{side}.")
        side_seed = seed + 7919 * (side == ITEM)
        self.encoders = [make_encoder(spec, vocabularies, width, regularization, side_seed, files)
                         for spec in self.specs]
        # (feature name, raw input name) of each encoder, in order.
        self.feature_inputs = [(spec.name, spec.name) for spec in self.specs]
        if histories is not None:
            feature = HISTORY if side == USER else ITEM_HISTORY
            self.encoders.append(HistoryEncoder(self.specs[0], histories, width, regularization,
                                                side_seed, feature))
            self.feature_inputs.append((feature, self.specs[0].name))
        self.hidden = [tf.keras.layers.Dense(units, activation="relu", kernel_regularizer=regularizer,
                                             kernel_initializer=tf.keras.initializers.GlorotUniform(
                                                 seed=seed + n), name=f"hidden_{n}")
                       for n, units in enumerate(hidden_units)]
        if self.hidden:
            self.projection = tf.keras.layers.Dense(
                latent_dim + 1, kernel_regularizer=regularizer, name="projection",
                kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed + 99))
        if side == USER:
            self.global_mean = self.add_weight(
                name="global_mean", shape=() if self.members == 1 else (self.members,),
                trainable=True,
                initializer=tf.keras.initializers.Constant(float(global_mean)))

    @property
    def output_dim(self):
        return self.members * self.latent_dim + 2

    def tables(self):
        """{vocabulary name: (StringLookup, Embedding)} of every looked-up feature of the tower."""
        out = {}
        for encoder in self.encoders:
            if isinstance(encoder, LookupEncoder):
                out.update({key: (encoder.lookups[key], encoder.embeddings[key])
                            for key in encoder.lookups})
            elif isinstance(encoder, TokenEncoder):
                out[encoder.spec.name] = (encoder.lookup, encoder.embedding)
            elif isinstance(encoder, HistoryEncoder):
                out[encoder.feature] = (encoder.lookup, encoder.embedding)
        return out

    def vocabularies(self):
        """{vocabulary name: values in row order}; row 0 of each table is the unknown slot."""
        return {key: list(values) for key, values in self.iter_vocabularies()}

    def iter_vocabularies(self):
        """(vocabulary name, its values in row order) of each table, as `vocabularies`, but a
        vocabulary kept in a file is read a value at a time (never a list)."""
        for key, (lookup, _) in self.tables().items():
            yield key, _vocabulary_values(lookup)

    def weight_key(self, variable):
        """``side/layer/variable``: a name for `variable` that depends neither on the enclosing
        model's name nor on the name scope the variable was created in (layer names are unique
        within a tower)."""
        return f"{self.side}/" + "/".join(variable.name.split("/")[-2:])

    def preprocess(self, inputs):
        """Raw features -> the encoders' integer inputs (row numbers, buckets, token ids).

        Training runs this once over the data and trains `embed` on the result; serving runs both.
        """
        return {name: encoder.preprocess(inputs[source])
                for (name, source), encoder in zip(self.feature_inputs, self.encoders)}

    def call(self, inputs):
        return self.embed(self.preprocess(inputs))

    def embed(self, preprocessed):
        """The tower's embedding from `preprocess`'s output."""
        return self._embed(preprocessed, with_penalty=False)[0]

    def embed_with_penalty(self, preprocessed):
        """(embedding, batch-scoped J): J of every embedding row the batch looked up, divided by
        the number of examples (text and tag rows: by the number of tokens); 0 under table scope,
        where Keras weight regularizers (`losses`) carry J instead."""
        return self._embed(preprocessed, with_penalty=self.row_regularizer is not None)

    def members_with_penalty(self, preprocessed):
        """(each member's embedding [batch, M, k + 2], J as in `embed_with_penalty`)."""
        encoded, penalty = self._encode(preprocessed, self.row_regularizer is not None)
        return self._members(encoded), penalty

    def _embed(self, preprocessed, with_penalty):
        encoded, penalty = self._encode(preprocessed, with_penalty)
        if self.members > 1:
            return self.fold_members(self._members(encoded)), penalty
        return self._fold_biases(encoded), penalty

    def _members(self, encoded):
        k = self.latent_dim
        encoded = tf.reshape(encoded, [-1, self.members, k + 1])
        latent, bias = encoded[..., :k], encoded[..., k:]
        ones = tf.ones_like(bias)
        if self.side == USER:
            return tf.concat([latent, bias + self.global_mean[:, tf.newaxis], ones], axis=-1)
        return tf.concat([latent, ones, bias], axis=-1)

    def fold_members(self, members):
        """Member embeddings [batch, M, k + 2] -> the one vector per row whose dot products are
        the members' mean predicted rating (see the class docstring)."""
        k, m = self.latent_dim, self.members
        latent = tf.reshape(members[..., :k], [-1, m * k])
        if self.side == USER:
            latent = latent / m
        return tf.concat([latent, tf.reduce_mean(members[..., k:], axis=1)], axis=1)

    def _encode(self, preprocessed, with_penalty):
        parts, penalties = [], []
        for (name, _), encoder in zip(self.feature_inputs, self.encoders):
            rows = encoder.rows(preprocessed[name])
            parts.append(encoder.combine(rows))
            if with_penalty:
                penalties += [self._row_penalty(r) for r in rows]
        penalty = tf.add_n(penalties) if penalties else tf.constant(0.0)
        return self._combine(parts), penalty

    def _row_penalty(self, rows):
        if isinstance(rows, bags.Bag):
            return bags.bag_penalty(rows, self.row_regularizer)
        values = rows.flat_values if isinstance(rows, tf.RaggedTensor) else rows
        count = tf.cast(tf.maximum(tf.shape(values)[0], 1), values.dtype)
        return self.row_regularizer(values) / count

    def _combine(self, parts):
        if self.hidden:
            hidden = tf.concat(parts, axis=1)
            for layer in self.hidden:
                hidden = layer(hidden)
            return self.projection(hidden)
        return tf.add_n(parts)

    def _fold_biases(self, encoded):
        latent, bias = encoded[:, : self.latent_dim], encoded[:, self.latent_dim:]
        ones = tf.ones_like(bias)
        if self.side == USER:
            return tf.concat([latent, bias + self.global_mean, ones], axis=1)
        return tf.concat([latent, ones, bias], axis=1)
