"""The rows of `peers.py --held_out=inner`: a split's training + validation rows as a whole data
set, to be split again, so that settings that train on the validation rows (cross-fitting, refit)
are judged without reading the real test rows."""

import dataclasses

from tte_tfrs.data.split import split_ratings


def inner_dataset(dataset, split, base):
    """`dataset` less its test rows under `split` (and without predefined folds): the data of
    --held_out=inner, split again at random. Implicit interactions stay (they are never test
    rows)."""
    if split == "random":
        outer = split_ratings(dataset, split, base.validation_fraction, base.test_fraction,
                              False, base.seed)
        # The splits' frames are re-indexed from 0: the source line names a row.
        assert dataset.ratings["line"].is_unique, "inner rows need one source line per rating"
        ratings = dataset.ratings[~dataset.ratings["line"].isin(outer.test["line"])]
    else:                                          # a fold: its base file is the whole data
        ratings = dataset.folds[split][0]
    return dataclasses.replace(dataset, ratings=ratings.reset_index(drop=True), folds={})
