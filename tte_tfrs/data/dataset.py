"""The validated, reader-independent form of a rating data set."""

import dataclasses

import numpy as np
import pandas as pd


@dataclasses.dataclass
class Dataset:
    """Cleaned tables of one rating data set, whatever file layout it came from.

    Attributes:
      name: data set family (``book-crossing`` or ``movielens-100k``).
      layout: the file layout that was read (``kaggle``, ``bx`` or ``movielens``).
      source: the path that was read.
      ratings: columns ``user_id`` (str), ``item_id`` (str), ``rating`` (float32), ``line`` (the
        file line, for messages); explicit and implicit ratings alike.
      users: ``user_id`` plus one column per user feature; may lack ids that appear in `ratings`.
      items: ``item_id`` plus one column per item feature (``title`` included when known).
      user_features: `FeatureSpec`s of the user tower, ``user_id`` first.
      item_features: `FeatureSpec`s of the item tower, ``item_id`` first.
      rating_scale: (lowest, highest) valid explicit rating.
      implicit_rating: the rating value that marks an implicit interaction, or None.
      folds: predefined (train, test) line-index splits by name, e.g. MovieLens ``u1``.
      report: the `DataReport` of everything the reader decided.
    """

    name: str
    layout: str
    source: str
    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    user_features: tuple
    item_features: tuple
    rating_scale: tuple
    implicit_rating: float | None
    report: object
    folds: dict = dataclasses.field(default_factory=dict)

    def explicit_mask(self):
        """Boolean array: which ratings are explicit scores (not implicit interactions)."""
        if self.implicit_rating is None:
            return np.ones(len(self.ratings), dtype=bool)
        return self.ratings["rating"].to_numpy() != self.implicit_rating

    def catalogue(self):
        """Every known item: the items table plus items that only appear in ratings, with features."""
        rated = pd.DataFrame({"item_id": pd.unique(self.ratings["item_id"])})
        known = self.items["item_id"]
        extra = rated[~rated["item_id"].isin(known)]
        table = pd.concat([self.items, extra], ignore_index=True)
        return fill_missing(table, self.item_features)

    def counts(self):
        explicit = self.explicit_mask()
        return {
            "ratings": int(len(self.ratings)),
            "explicit_ratings": int(explicit.sum()),
            "implicit_ratings": int((~explicit).sum()),
            "users_rating": int(self.ratings["user_id"].nunique()),
            "items_rated": int(self.ratings["item_id"].nunique()),
            "users_table": int(len(self.users)),
            "items_table": int(len(self.items)),
        }


def fill_missing(table, specs):
    """Adds absent feature columns and fills missing values with each feature's 'unknown' value."""
    table = table.copy()
    for spec in specs:
        if spec.name not in table.columns:
            table[spec.name] = spec.missing_value
        if spec.kind == "number":
            table[spec.name] = pd.to_numeric(table[spec.name], errors="coerce").astype(np.float32)
        else:
            table[spec.name] = table[spec.name].fillna("").astype(str)
    return table


def join_features(ratings, dataset):
    """Attaches user and item features to each rating row (missing ones get the 'unknown' value).

    Returns:
      A dict from column name to numpy array: every user and item feature plus ``rating``.
    """
    user_cols = [s.name for s in dataset.user_features]
    item_cols = [s.name for s in dataset.item_features]
    users = fill_missing(dataset.users, dataset.user_features)[_with_key("user_id", user_cols)]
    items = fill_missing(dataset.items, dataset.item_features)[_with_key("item_id", item_cols)]
    joined = ratings[["user_id", "item_id", "rating"]].merge(users, on="user_id", how="left",
                                                            validate="many_to_one")
    joined = joined.merge(items, on="item_id", how="left", validate="many_to_one")
    joined = fill_missing(joined, dataset.user_features + dataset.item_features)
    columns = {name: joined[name].to_numpy() for name in user_cols + item_cols}
    for name in user_cols + item_cols:
        if columns[name].dtype != np.float32:
            columns[name] = columns[name].astype(object)
    columns["rating"] = joined["rating"].to_numpy(dtype=np.float32)
    return columns


def _with_key(key, columns):
    return [key] + [c for c in columns if c != key]
