"""Feature specifications: the raw inputs of each tower, their dtypes and how they are standardised.

The standardising functions here are TensorFlow ops, used both inside the exported towers and when the
vocabularies are built, so training, export and serving agree on every string. Text is Unicode:
lower-cased as UTF-8 and split into runs of letters, digits and combining marks in any script, so
``Café Müller's Straße`` gives ``café``, ``müller``, ``straße`` in training and in serving alike.

Ids have one normalisation: `normalize_id` in the graphs and its exact Python twin
`tte_tfrs.ids.canonical_id` for every lookup outside them (re-exported here).
"""

import dataclasses

import numpy as np
import pandas as pd
import tensorflow as tf

from tte_tfrs.ids import canonical_id, canonical_ids, id_problem, id_problems  # noqa: F401

KINDS = ("id", "category", "location", "number", "text", "tags")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One raw feature of a tower.

    Attributes:
      name: input name in the exported signature and column name in the tables.
      kind: how it is encoded: ``id`` (one embedding row per value, out-of-vocabulary slot for new
        ones), ``category`` (like id, for low-cardinality values), ``location`` (a
        "city, state, country" string; country and state get their own embeddings), ``number``
        (bucketised; missing, non-positive or out-of-range values share one slot), ``text`` (words
        averaged) or ``tags`` (``|``-separated labels averaged).
      description: what the value is, for the manifest and the README.
      boundaries: bucket boundaries of a ``number``; values outside (boundaries[0], boundaries[-1]]
        count as missing.
      normalize: ``isbn`` to upper-case ids and drop everything but letters and digits.
    """

    name: str
    kind: str
    description: str = ""
    boundaries: tuple = ()
    normalize: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"feature {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "number" and len(self.boundaries) < 2:
            raise ValueError(f"feature {self.name!r}: a number needs at least two boundaries")

    @property
    def dtype(self):
        return tf.float32 if self.kind == "number" else tf.string

    @property
    def missing_value(self):
        """The value that stands for 'unknown' in tables and requests."""
        return np.nan if self.kind == "number" else ""

    def tensor_spec(self):
        return tf.TensorSpec(shape=[None], dtype=self.dtype, name=self.name)


def normalize_id(values, how):
    """Standardises id strings: strips spaces; for ``isbn`` also upper-cases and keeps only [0-9A-Z].

    `tte_tfrs.ids.canonical_id` is the same function in Python; a test holds the two to agree.
    """
    values = tf.strings.strip(values)
    if how == "isbn":
        values = tf.strings.regex_replace(tf.strings.upper(values), "[^0-9A-Z]", "")
    return values


def location_parts(values):
    """Splits "city, state, country" strings into (country, state), lower-cased and stripped.

    Missing parts and placeholders such as "n/a" become the empty string.
    """
    parts = tf.strings.split(tf.strings.lower(values, encoding="utf-8"), sep=",")
    # Two empty parts in front of every row, so the last and second-to-last parts always exist.
    padding = tf.RaggedTensor.from_tensor(tf.fill(tf.stack([tf.size(values), 2]), ""))
    padded = tf.concat([padding, parts], axis=1)
    last = padded.row_limits() - 1
    country = _clean_part(tf.gather(padded.values, last))
    state = _clean_part(tf.gather(padded.values, last - 1))
    return country, state


def _clean_part(values):
    values = tf.strings.strip(values)
    values = tf.strings.regex_replace(values, r'^["\s.]+|["\s.]+$', "")
    placeholder = tf.strings.regex_full_match(values, r"n/?a|none|unknown|-+|\?+")
    return tf.where(placeholder, tf.constant(""), values)


def sanitize_number(values, boundaries):
    """Maps NaN, non-positive and out-of-range values to 0, the 'missing' bucket's input."""
    low, high = float(boundaries[0]), float(boundaries[-1])
    valid = tf.logical_and(values > low, values <= high)
    valid = tf.logical_and(valid, tf.logical_not(tf.math.is_nan(values)))
    return tf.where(valid, values, tf.zeros_like(values))


def standardize_strings(spec, values):
    """The string values a lookup sees for `spec` (ids normalised, locations split).

    Returns:
      A dict from vocabulary name (the feature name, or ``name/country`` and ``name/state`` for a
      location) to a string tensor.
    """
    if spec.kind == "id":
        return {spec.name: normalize_id(values, spec.normalize)}
    if spec.kind == "category":
        return {spec.name: tf.strings.strip(values)}
    if spec.kind == "location":
        country, state = location_parts(values)
        return {f"{spec.name}/country": country, f"{spec.name}/state": state}
    raise ValueError(f"feature {spec.name!r} of kind {spec.kind!r} has no string standardisation")


def standardize_names(spec):
    """The vocabulary names `standardize_strings` gives for `spec`, in its order."""
    if spec.kind == "location":
        return [f"{spec.name}/country", f"{spec.name}/state"]
    return [spec.name]


def text_tokens(values):
    """Words of Unicode text (a ragged tensor): lower-cased as UTF-8 (invalid bytes become U+FFFD),
    a possessive ``'s`` dropped, and every character that is not a letter, digit or combining mark
    of any script treated as a separator."""
    values = tf.strings.lower(values, encoding="utf-8")
    values = tf.strings.regex_replace(values, r"['\x{2019}]s(?:[^\pL\pN\pM]|$)|[^\pL\pN\pM\s]", " ")
    return tf.strings.split(values)


def tag_tokens(values):
    """Splits ``|``-separated labels (a ragged tensor)."""
    return tf.strings.split(tf.strings.strip(values), sep="|")


def standardize_column(spec, values):
    """Runs `standardize_strings` on a numpy/pandas column; returns {vocabulary name: str array}."""
    tensor = tf.constant(as_object_strings(values), dtype=tf.string)
    out = standardize_strings(spec, tensor)
    return {key: np.array([b.decode("utf-8") for b in t.numpy()], dtype=object)
            for key, t in out.items()}


def as_object_strings(values):
    """`values` as an object array of str. Never a fixed-width numpy string array, whose memory is
    the longest value's length times the number of rows."""
    return pd.Series(values, dtype=object).astype(str).to_numpy(dtype=object)
