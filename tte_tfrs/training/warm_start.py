"""Warm starts: continue the current version of an export on new data (SRS NFR1).

An update reads the parent version's checkpoint (vocabularies and weights), grows every vocabulary
by appending the new data's values (known values keep their rows, copied bit for bit), trains on
the new data (continuing the parent's Adagrad accumulators; other optimizers start afresh), and is
exported as the next version with the parent's catalogue, users and interactions carried over.
Inputs that would poison the model are refused before anything is trained or written
(`check_update`, and the dropped-rows rule of every training run). New data with ratings only
takes the parent's users and items tables (`with_parent_tables`).

May import: tte_tfrs.data, tte_tfrs.model, tte_tfrs.training, tte_tfrs.exports.reader.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from tte_tfrs.data.dataset import Dataset, join_features
from tte_tfrs.data.loader import full_schema, load_dataset
from tte_tfrs.errors import ConfigError, TteError
from tte_tfrs.exports.reader import ExportReader, read_consistent
from tte_tfrs.model.history import HISTORY, ITEM_HISTORY, history_vocabulary
from tte_tfrs.model.two_tower import RATING
from tte_tfrs.model.vocabulary import build_vocabularies
from tte_tfrs.training import checkpoint
from tte_tfrs.training import trainer as training
from tte_tfrs.training.config import TrainConfig

# Settings that shape the model's tables: an update keeps the parent's.
FIXED_BY_PARENT = ("embedding_dim", "hidden_units", "regularizer", "min_count", "max_text_tokens",
                   "user_history", "item_history", "history_size", "ensemble_members", "tune_trials",
                   "tune_minutes")
# An update whose item table lists less than this share of the parent's catalogue is refused.
MIN_CATALOGUE_SHARE = 0.5


class UpdateRefusedError(TteError, ValueError):
    """New data or settings that would damage the model; nothing was trained or written."""


@dataclasses.dataclass
class Parent:
    """The exported version an update continues from.

    Attributes:
      output_dir: the export root.
      version: the parent version (the current one when the update started).
      manifest: its manifest.
      vocabularies, weights, optimizer_state: its checkpoint.
      items: its catalogue (item features), users: its known users (user features),
      interactions: its (user_id, item_id) pairs.
    """

    output_dir: str
    version: int
    manifest: dict
    vocabularies: dict
    weights: dict
    optimizer_state: dict
    items: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame

    @classmethod
    def load(cls, output_dir: str) -> Parent:
        """Reads the current version of `output_dir`.

        Raises:
          ExportError: no export there, or a damaged one. UpdateRefusedError: the version has no
          checkpoint.
        """
        def load(reader: ExportReader) -> Parent:
            state = reader.checkpoint()
            TrainConfig.from_manifest(reader.manifest, reader.path("manifest.json"))
            return cls(output_dir, reader.version, reader.manifest, state.vocabularies,
                       state.weights, state.optimizer_state, reader.item_table.items,
                       reader.users.reset_index(drop=True), reader.interactions())

        return read_consistent(output_dir, load)

    def input_kinds(self, model_name: str) -> dict[str, str]:
        inputs = self.manifest["signatures"][model_name]["inputs"]
        return {name: spec["kind"] for name, spec in inputs.items()}

    def config(self, **overrides: Any) -> TrainConfig:
        """The parent's `TrainConfig` with `overrides`; table-shaping settings cannot change.

        Raises:
          ConfigError: an override of a setting in `FIXED_BY_PARENT` or an unknown field.
        """
        parent = TrainConfig.from_manifest(self.manifest, f"{self.output_dir}/manifest.json")
        for field in ("user_history", "item_history"):       # exported before the feature
            if field not in self.manifest["config"]:
                parent = dataclasses.replace(parent, **{field: False})
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        for key, value in overrides.items():
            if key not in known:
                raise ConfigError(f"{key!r} is not a TrainConfig field", field=key)
            if key in FIXED_BY_PARENT and value != getattr(parent, key):
                raise ConfigError(
                    f"an update keeps the parent's {key} ({getattr(parent, key)!r}); {value!r} "
                    "needs a new model: train one without warm starting", field=key)
        return dataclasses.replace(parent, **overrides)


def with_parent_tables(parent: Parent, dataset: Dataset) -> Dataset:
    """New data without a side table the parent had (new ratings only) takes the parent's: its
    feature schema and its users or items table, so known users and books keep their features.
    Data with its own tables is returned as it is."""
    schema = full_schema(dataset.name)
    if schema is None:
        return dataset
    changes: dict[str, Any] = {}
    for side, specs, table, kind, key in (
            ("user_tower", schema[0], parent.users, "user_features", "users"),
            ("item_tower", schema[1], parent.items, "item_features", "items")):
        if len(getattr(dataset, key)):                       # the data brings its own table
            continue
        if {spec.name: spec.kind for spec in specs} == parent.input_kinds(side):
            changes[kind] = specs
            changes[key] = table[[spec.name for spec in specs]].reset_index(drop=True)
    return dataclasses.replace(dataset, **changes) if changes else dataset


def check_update(parent: Parent, dataset: Dataset) -> None:
    """Refuses data that would poison an update of `parent`. (Unusable rows are refused by the
    rule every training applies: `tte_tfrs.data.cleaning.check_dropped_share`.)

    Raises:
      UpdateRefusedError: the features (schema) or rating scale differ from the parent's, or an
        item table that lists less than half of the parent's catalogue.
    """
    where = f"version {parent.version} of {parent.output_dir}"
    for model_name, specs in (("user_tower", dataset.user_features),
                              ("item_tower", dataset.item_features)):
        expected = parent.input_kinds(model_name)
        found = {spec.name: spec.kind for spec in specs}
        if found != expected:
            raise UpdateRefusedError(
                f"{dataset.source}: the new data's {model_name.split('_')[0]} features "
                f"{_describe(found)} differ from those of {where} {_describe(expected)}: a "
                "different schema cannot update this model")
    scale = list(parent.manifest["dataset"]["rating_scale"])
    if list(dataset.rating_scale) != scale:
        raise UpdateRefusedError(f"{dataset.source}: ratings on a {dataset.rating_scale} scale "
                                 f"cannot update {where}, trained on {tuple(scale)}")
    if len(dataset.items) and len(parent.items):
        kept = parent.items["item_id"].isin(dataset.items["item_id"]).mean()
        if kept < MIN_CATALOGUE_SHARE:
            raise UpdateRefusedError(
                f"{dataset.source}: the item table lists only {kept:.0%} of the "
                f"{len(parent.items):,} items of {where}; a catalogue that lost most of its items "
                "is refused (an update with new ratings only needs no item table)")


def _describe(kinds: dict[str, str]) -> str:
    return "(" + ", ".join(f"{name}: {kind}" for name, kind in kinds.items()) + ")"


def data_added(parent: Parent, dataset: Dataset) -> dict[str, int]:
    """What the new data adds to the parent: interactions it did not know, and users and items
    that had no embedding row of their own in the parent (ids are the first feature of a tower)."""
    ratings = dataset.ratings
    known_pairs = pd.MultiIndex.from_frame(parent.interactions[["user_id", "item_id"]])
    pairs = pd.MultiIndex.from_frame(ratings[["user_id", "item_id"]])
    user_rows = set(parent.vocabularies.get(dataset.user_features[0].name, []))
    item_rows = set(parent.vocabularies.get(dataset.item_features[0].name, []))
    return {"ratings": int(len(ratings)),
            "new_interactions": int((~pairs.isin(known_pairs)).sum()),
            "new_users": int(len(set(ratings["user_id"]) - user_rows)),
            "new_items": int(len(set(ratings["item_id"]) - item_rows))}


def warm_start(output_dir: str, dataset: Dataset | None = None,
               **overrides: Any) -> training.TrainResult:
    """Continues the current version of `output_dir` on new data.

    Args:
      output_dir: an export root written by `tte_tfrs.export` (with checkpoints).
      dataset: the new data as a `Dataset`; None reads ``data_dir`` (an override) or, without one,
        the parent's own data source again (e.g. its files with rows appended). Data without a
        users or items table (new ratings only) uses the parent's.
      **overrides: `TrainConfig` fields for this run (epochs, learning_rate, ...); the parent's
        values are used for the rest.

    Returns:
      A `TrainResult` whose ``parent`` and ``update`` fields tell `tte_tfrs.export` to write the
      next version with the parent's catalogue and users carried over.

    Raises:
      UpdateRefusedError, ConfigError, DataError: nothing was trained.
    """
    if overrides.get("cross_fit"):
        raise ConfigError("an update trains on the new training rows and early-stops on held-out "
                          "validation rows; cross_fit applies to a new model only: leave it out",
                          field="cross_fit")
    parent = Parent.load(output_dir)
    # A cross-fitted parent's update holds its validation rows out like any other.
    config = dataclasses.replace(parent.config(**overrides), cross_fit=False)
    if dataset is None:
        dataset = load_dataset(config.data_dir, config.dataset)
    dataset = with_parent_tables(parent, dataset)
    check_update(parent, dataset)
    dataset, splits, train_columns, validation_columns = training.start(config, dataset)

    specs = dataset.user_features + dataset.item_features
    new_vocabularies = build_vocabularies(specs, train_columns, config.min_count,
                                          config.max_text_tokens)
    pairs = None
    if config.user_history or config.item_history:  # the parent's interactions stay in them
        pairs = training.history_pairs(dataset, splits, parent.interactions)
        if config.user_history:
            new_vocabularies[HISTORY] = history_vocabulary(pairs, "item_id")
        if config.item_history:
            new_vocabularies[ITEM_HISTORY] = history_vocabulary(pairs, "user_id")
    vocabularies, growth = checkpoint.grow_vocabularies(parent.vocabularies, new_vocabularies)
    histories = training.histories_for(config, dataset, splits, parent.interactions, vocabularies,
                                       pairs=pairs)
    global_mean = float(np.mean(train_columns[RATING]))
    model = training.build_model(config, dataset, train_columns, global_mean, vocabularies,
                                 histories)
    training.predict(model, {k: v[:1] for k, v in train_columns.items()})   # creates the weights
    checkpoint.restore_grown(model, parent.weights)

    test_columns = join_features(splits.test, dataset)       # joined once, scored twice
    before = training.evaluate_splits(model, dataset, splits, validation_columns, global_mean,
                                      test_columns)
    history, metrics = training.fit(model, config, train_columns, validation_columns,
                                    parent.optimizer_state)
    after = training.evaluate_splits(model, dataset, splits, validation_columns, global_mean,
                                     test_columns)
    if not all(np.isfinite(v) for v in after.values()):
        raise training.diverged(config, "the metrics after the update")
    metrics.update(after)
    update = {"parent_version": parent.version, "data_added": data_added(parent, dataset),
              "vocabulary_growth": growth, "metrics_before": before, "metrics_after": after}
    return training.TrainResult(model=model, config=config, dataset=dataset, splits=splits,
                                metrics=metrics, history=history, parent=parent, update=update)
