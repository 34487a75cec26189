"""Shared fixtures: a small generated Book-Crossing folder, a model trained on it, its export."""

import os

import pytest

import tte_tfrs  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from tte_tfrs.data.synthetic import SyntheticConfig, write_bookcrossing
from tte_tfrs.training.config import TrainConfig

TINY = SyntheticConfig(n_users=400, n_items=300, n_interactions=9000, seed=7)


def tiny_config(data_dir, **overrides):
    values = dict(data_dir=str(data_dir), embedding_dim=8, epochs=4, batch_size=256,
                  early_stopping_patience=0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """(folder, PlantedTruth) of a small Kaggle-layout data set with the planted mess."""
    folder = tmp_path_factory.mktemp("tiny-bx")
    truth = write_bookcrossing(str(folder), TINY)
    return str(folder), truth


@pytest.fixture(scope="session")
def trained(tiny_data):
    from tte_tfrs.training.trainer import train
    return train(tiny_config(tiny_data[0]))


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    from tte_tfrs.exports.writer import export
    out = tmp_path_factory.mktemp("export")
    return export(trained, os.path.join(str(out), "models"))
