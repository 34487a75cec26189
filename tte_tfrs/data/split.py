"""Deterministic train / validation / test splits of the ratings."""

import dataclasses
import hashlib

import numpy as np
import pandas as pd

from tte_tfrs.errors import ConfigError


@dataclasses.dataclass
class Splits:
    """Rating tables of the three splits (columns ``user_id``, ``item_id``, ``rating``, ``line``)."""

    train: object
    validation: object
    test: object

    def sizes(self):
        return {"train": len(self.train), "validation": len(self.validation),
                "test": len(self.test)}

    def hashes(self):
        """{split: `membership_hash`}: what an export records, so an evaluation can prove it
        scores the rows the model was tested on and trained without."""
        return {name: membership_hash(getattr(self, name)) for name in ("train", "validation",
                                                                         "test")}


def membership_hash(ratings):
    """A digest of which (user, item, rating) rows a split holds, independent of row order."""
    frame = pd.DataFrame({"user_id": ratings["user_id"].astype(str).to_numpy(),
                          "item_id": ratings["item_id"].astype(str).to_numpy(),
                          "rating": [f"{r:.9g}" for r in ratings["rating"].to_numpy(np.float64)]})
    frame = frame.sort_values(["user_id", "item_id", "rating"], kind="stable")
    text = "\n".join((frame["user_id"] + "\t" + frame["item_id"] + "\t" + frame["rating"]).tolist())
    return f"sha256:{len(frame)}:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_ratings(dataset, split="random", validation_fraction=0.1, test_fraction=0.1,
                  include_implicit=False, seed=42):
    """Splits the usable ratings of `dataset` by seed (same seed and data, same split).

    Args:
      dataset: a `Dataset`.
      split: ``random``, or a predefined fold name of the data set (MovieLens ``u1``..``ub``): the
        fold's test file is the test set and validation is drawn from its base file.
      validation_fraction: share held out for validation.
      test_fraction: share held out for testing (random split only).
      include_implicit: keep implicit interactions (rating 0 in Book-Crossing).
      seed: the permutation seed.

    Raises:
      ConfigError: the fold does not exist or a split would be empty.
    """
    rng = np.random.default_rng(seed)
    if split == "random":
        ratings = dataset.ratings
        if not include_implicit:
            ratings = ratings[dataset.explicit_mask()]
            if len(ratings) == 0 and len(dataset.ratings):
                raise ConfigError(
                    f"all {len(dataset.ratings):,} ratings of {dataset.source} are implicit (rating "
                    f"{dataset.implicit_rating:g}: the user interacted with the book without rating "
                    "it), and only explicit ratings are trained on by default; include_implicit "
                    "(--include_implicit) trains on them as ratings of 0", field="include_implicit")
        order = rng.permutation(len(ratings))
        n_test = int(round(test_fraction * len(ratings)))
        n_val = int(round(validation_fraction * len(ratings)))
        test = ratings.iloc[np.sort(order[:n_test])]
        validation = ratings.iloc[np.sort(order[n_test:n_test + n_val])]
        train = ratings.iloc[np.sort(order[n_test + n_val:])]
    else:
        if split not in dataset.folds:
            raise ConfigError(f"split {split!r} is not a fold of {dataset.name} "
                              f"(available: {', '.join(sorted(dataset.folds)) or 'none'})")
        base, test = dataset.folds[split]
        order = rng.permutation(len(base))
        n_val = int(round(validation_fraction * len(base)))
        validation = base.iloc[np.sort(order[:n_val])]
        train = base.iloc[np.sort(order[n_val:])]
    splits = Splits(train.reset_index(drop=True), validation.reset_index(drop=True),
                    test.reset_index(drop=True))
    for name, size in splits.sizes().items():
        if size == 0 and not (name == "test" and test_fraction == 0):
            raise ConfigError(f"the {name} split is empty: {dataset.source} has too few usable "
                              f"ratings ({len(dataset.ratings)} rows)")
    return splits
