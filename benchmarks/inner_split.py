"""The rows of `peers.py --held_out=inner`: a split's training + validation rows as a whole data
set, to be split again, so that settings that train on the validation rows (cross-fitting, refit)
are judged without reading the real test rows."""

import dataclasses

import pandas as pd

from tte_tfrs.data.split import split_ratings


def inner_dataset(dataset, split, base):
    """`dataset` less its test rows under `split` (and without predefined folds): the data of
    --held_out=inner, split again at random. Implicit interactions stay (they are never test
    rows). Raises ValueError when the rows cannot be told apart by source line or when a
    (user, item) pair of the result is also a test pair."""
    if split == "random":
        outer = split_ratings(dataset, split, base.validation_fraction, base.test_fraction,
                              False, base.seed)
        # The splits' frames are re-indexed from 0: the source line names a row.
        for name, frame in (("the data", dataset.ratings), ("the test rows", outer.test)):
            if "line" not in frame.columns:
                raise ValueError(f"inner rows: {name} have no 'line' column (source line)")
        if not dataset.ratings["line"].is_unique:
            raise ValueError("inner rows: the data's source lines are not unique, so the test "
                             "rows cannot be dropped by line")
        test = outer.test
        ratings = dataset.ratings[~dataset.ratings["line"].isin(test["line"])]
    else:                                          # a fold: its base file is the whole data
        ratings, test = dataset.folds[split]
    shared = _pairs(ratings).merge(_pairs(test)).drop_duplicates()
    if len(shared):
        first = shared.iloc[0]
        raise ValueError(f"inner rows: {len(shared)} (user, item) pairs are also test pairs, "
                         f"such as ({first['user_id']}, {first['item_id']})")
    return dataclasses.replace(dataset, ratings=ratings.reset_index(drop=True), folds={})


def _pairs(frame):
    return pd.DataFrame({"user_id": frame["user_id"].astype(str),
                         "item_id": frame["item_id"].astype(str)})
