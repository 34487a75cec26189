"""Deterministic train / validation / test splits of the ratings."""

import dataclasses

import numpy as np

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
            raise ConfigError(f"the {name} split is empty: the data set has too few usable ratings "
                              f"({len(dataset.ratings)} rows)")
    return splits
