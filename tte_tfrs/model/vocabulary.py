"""Builds the vocabularies of the tower lookups from training data."""

import numpy as np
import pandas as pd
import tensorflow as tf

from tte_tfrs.data import features


def build_vocabularies(specs, columns, min_count, max_text_tokens, weights=None):
    """Lists, for each lookup of `specs`, the values that get their own embedding row.

    Values are ordered by descending frequency, then alphabetically, so the result (and therefore
    the model) does not depend on row order. The empty string never gets a row: it means unknown
    and falls into the out-of-vocabulary slot with every unseen value.

    Args:
      specs: `FeatureSpec`s of one tower.
      columns: dict from feature name to the training column (numpy array).
      min_count: frequency needed by categories, locations, words and tags. Ids need one rating.
      max_text_tokens: the most frequent words kept per text feature.
      weights: how many training rows each row of `columns` stands for (None: one each), so the
        distinct users or items of the training rows, weighted by their rating counts, give the
        vocabularies of the training rows themselves (`tte_tfrs.data.streaming`).

    Returns:
      A dict from lookup name (feature name, or ``location/country`` and ``location/state``) to a
      list of strings. Number features have none.
    """
    vocabularies = {}
    for spec in specs:
        if spec.kind == "number":
            continue
        values = columns[spec.name]
        if spec.kind in ("text", "tags"):
            tokenize = features.text_tokens if spec.kind == "text" else features.tag_tokens
            strings = tf.constant(features.as_object_strings(values), dtype=tf.string)
            tokens = tokenize(strings)
            words = pd.Series(tokens.flat_values.numpy()).map(lambda b: b.decode("utf-8"))
            counted = _ranked(words, min_count, None if weights is None else
                              np.repeat(weights, tokens.row_lengths().numpy()))
            vocabularies[spec.name] = counted[: max_text_tokens]
            continue
        needed = 1 if spec.kind == "id" else min_count
        for name, standardized in features.standardize_column(spec, values).items():
            vocabularies[name] = _ranked(pd.Series(standardized), needed, weights)
    return vocabularies


def _ranked(series, min_count, weights=None):
    if weights is None:
        counts = series[series != ""].value_counts()
    else:
        weights = pd.Series(np.asarray(weights, dtype=np.int64), index=series.index)
        known = series != ""
        counts = weights[known].groupby(series[known].to_numpy()).sum()
    counts = counts[counts >= min_count]
    frame = pd.DataFrame({"value": counts.index.astype(str), "count": counts.to_numpy()})
    frame = frame.sort_values(["count", "value"], ascending=[False, True], kind="stable")
    return frame["value"].tolist()
