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
    return rank_values(specs, count_values(specs, columns, weights), min_count, max_text_tokens)


def count_values(specs, columns, weights=None):
    """How often each value of each lookup of `specs` occurs in `columns` (weighted by `weights`):
    {lookup name: pd.Series of counts indexed by value}, the empty string left out. Counts of
    slices of the rows add up (`add_counts`) to the counts of all of them."""
    counts = {}
    for spec in specs:
        if spec.kind == "number":
            continue
        values = columns[spec.name]
        if spec.kind in ("text", "tags"):
            tokenize = features.text_tokens if spec.kind == "text" else features.tag_tokens
            strings = tf.constant(features.as_object_strings(values), dtype=tf.string)
            tokens = tokenize(strings)
            words = pd.Series(tokens.flat_values.numpy()).map(lambda b: b.decode("utf-8"))
            counts[spec.name] = _counts(words, None if weights is None else
                                        np.repeat(weights, tokens.row_lengths().numpy()))
            continue
        for name, standardized in features.standardize_column(spec, values).items():
            counts[name] = _counts(pd.Series(standardized), weights)
    return counts


def add_counts(parts):
    """The counts of `count_values` over several slices of rows, summed per value (each part's
    values kept as compact pandas strings, not Python objects)."""
    out = {}
    for name in dict.fromkeys(name for part in parts for name in part):
        series = [part[name] for part in parts if name in part]
        out[name] = pd.concat(series).groupby(level=0, sort=False).sum() if len(series) > 1 \
            else series[0]
    return out


def rank_values(specs, counts, min_count, max_text_tokens):
    """The vocabularies (see `build_vocabularies`) of the counts of `count_values`."""
    vocabularies = {}
    for spec in specs:
        if spec.kind == "number":
            continue
        if spec.kind in ("text", "tags"):
            vocabularies[spec.name] = _ranked(counts[spec.name], min_count)[: max_text_tokens]
            continue
        needed = 1 if spec.kind == "id" else min_count
        for name in features.standardize_names(spec):
            vocabularies[name] = _ranked(counts[name], needed)
    return vocabularies


def _counts(series, weights=None):
    if weights is None:
        return series[series != ""].value_counts()
    weights = pd.Series(np.asarray(weights, dtype=np.int64), index=series.index)
    known = series != ""
    return weights[known].groupby(series[known].to_numpy()).sum()


def _ranked(counts, min_count):
    counts = counts[counts >= min_count]
    frame = pd.DataFrame({"value": counts.index.astype(str), "count": counts.to_numpy()})
    frame = frame.sort_values(["count", "value"], ascending=[False, True], kind="stable")
    return frame["value"].tolist()
