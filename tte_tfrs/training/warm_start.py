"""Warm starts: continue the current version of an export on new data (SRS NFR1).

An update reads the parent version's checkpoint (vocabularies and weights), grows every vocabulary
by appending the new data's values (known values keep their rows, copied bit for bit), trains on
the new data (continuing the parent's Adagrad accumulators; other optimizers start afresh), and is
exported as the next version with the parent's catalogue, users and interactions carried over.
Inputs that would poison the model are refused before anything is trained or written
(`check_update`).

May import: tte_tfrs.data, tte_tfrs.model, tte_tfrs.training, tte_tfrs.exports.reader.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from tte_tfrs.data.cleaning import OUT_OF_SCALE
from tte_tfrs.data.dataset import Dataset, join_features
from tte_tfrs.data.loader import load_dataset
from tte_tfrs.errors import ConfigError, TteError
from tte_tfrs.exports.reader import ExportReader
from tte_tfrs.model.two_tower import RATING
from tte_tfrs.model.vocabulary import build_vocabularies
from tte_tfrs.training import checkpoint
from tte_tfrs.training import trainer as training
from tte_tfrs.training.config import TrainConfig

# Settings that shape the model's tables: an update keeps the parent's.
FIXED_BY_PARENT = ("embedding_dim", "hidden_units", "regularizer", "min_count", "max_text_tokens")
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
        reader = ExportReader(output_dir)
        folder = reader.checkpoint_folder()
        try:
            vocabularies, weights = checkpoint.read_state(folder)
        except FileNotFoundError as exc:
            raise UpdateRefusedError(
                f"version {reader.version} of {output_dir} cannot be continued: {exc} (it was "
                "exported before checkpoints were written); train a new model instead") from None
        return cls(output_dir, reader.version, reader.manifest, vocabularies, weights,
                   checkpoint.read_optimizer_state(folder), reader.item_table.items,
                   reader.users.reset_index(drop=True), reader.interactions())

    def input_kinds(self, model_name: str) -> dict[str, str]:
        inputs = self.manifest["signatures"][model_name]["inputs"]
        return {name: spec["kind"] for name, spec in inputs.items()}

    def config(self, **overrides: Any) -> TrainConfig:
        """The parent's `TrainConfig` with `overrides`; table-shaping settings cannot change.

        Raises:
          ConfigError: an override of a setting in `FIXED_BY_PARENT` or an unknown field.
        """
        parent = TrainConfig.from_dict(self.manifest["config"])
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        for key, value in overrides.items():
            if key not in known:
                raise ConfigError(f"{key!r} is not a TrainConfig field", field=key)
            if key in FIXED_BY_PARENT and value != getattr(parent, key):
                raise ConfigError(
                    f"an update keeps the parent's {key} ({getattr(parent, key)!r}); {value!r} "
                    "needs a new model: train one without warm starting", field=key)
        return dataclasses.replace(parent, **overrides)


def check_update(parent: Parent, dataset: Dataset, allow_invalid_ratings: bool = False) -> None:
    """Refuses data that would poison an update of `parent`.

    Raises:
      UpdateRefusedError: the features (schema) or rating scale differ from the parent's; the files
        had ratings outside the scale (unless `allow_invalid_ratings`); or an item table that lists
        less than half of the parent's catalogue.
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
    if not allow_invalid_ratings:
        for report in dataset.report.files:
            for reason, count in report.dropped.items():
                if OUT_OF_SCALE in reason:
                    lines = ", ".join(map(str, report.examples.get(reason, [])))
                    raise UpdateRefusedError(
                        f"{report.path}: {count} rating(s) outside the scale {scale[0]:g}-"
                        f"{scale[1]:g} (e.g. line {lines}); an update refuses such files: fix "
                        "them, or allow_invalid_ratings (--allow_invalid_ratings) to drop those "
                        "rows as a first training does")
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
               allow_invalid_ratings: bool = False, **overrides: Any) -> training.TrainResult:
    """Continues the current version of `output_dir` on new data.

    Args:
      output_dir: an export root written by `tte_tfrs.export` (with checkpoints).
      dataset: the new data as a `Dataset`; None reads ``data_dir`` (an override) or, without one,
        the parent's own data source again (e.g. its files with rows appended).
      allow_invalid_ratings: drop ratings outside the scale instead of refusing the data.
      **overrides: `TrainConfig` fields for this run (epochs, learning_rate, ...); the parent's
        values are used for the rest.

    Returns:
      A `TrainResult` whose ``parent`` and ``update`` fields tell `tte_tfrs.export` to write the
      next version with the parent's catalogue and users carried over.

    Raises:
      UpdateRefusedError, ConfigError, DataError: nothing was trained.
    """
    parent = Parent.load(output_dir)
    config = parent.config(**overrides)
    if dataset is None:
        dataset = load_dataset(config.data_dir, config.dataset)
    check_update(parent, dataset, allow_invalid_ratings)
    dataset, splits, train_columns, validation_columns = training.start(config, dataset)

    specs = dataset.user_features + dataset.item_features
    new_vocabularies = build_vocabularies(specs, train_columns, config.min_count,
                                          config.max_text_tokens)
    vocabularies, growth = checkpoint.grow_vocabularies(parent.vocabularies, new_vocabularies)
    global_mean = float(np.mean(train_columns[RATING]))
    model = training.build_model(config, dataset, train_columns, global_mean, vocabularies)
    training.predict(model, {k: v[:1] for k, v in train_columns.items()})   # creates the weights
    checkpoint.restore_grown(model, parent.weights)

    test_columns = join_features(splits.test, dataset)       # joined once, scored twice
    before = training.evaluate_splits(model, dataset, splits, validation_columns, global_mean,
                                      test_columns)
    history, metrics = training.fit(model, config, train_columns, validation_columns,
                                    parent.optimizer_state)
    after = training.evaluate_splits(model, dataset, splits, validation_columns, global_mean,
                                     test_columns)
    metrics.update(after)
    update = {"parent_version": parent.version, "data_added": data_added(parent, dataset),
              "vocabulary_growth": growth, "metrics_before": before, "metrics_after": after}
    return training.TrainResult(model=model, config=config, dataset=dataset, splits=splits,
                                metrics=metrics, history=history, parent=parent, update=update)
