"""benchmarks/peers.py end to end (without the bench extra's peers: --nomyfm --nosurprise): it
scores the rows it says it scores, ranks for the users it samples and writes its tables."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tte_tfrs.data.loader import load_dataset
from tte_tfrs.data.split import split_ratings
from tte_tfrs.training.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OURS = "tte_tfrs [epochs=3,embedding_dim=8]"
MAX_USERS = 40


@pytest.fixture(scope="module", params=["test", "inner"])
def run(request, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"peers-{request.param}")
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "peers.py"), "--noembedded",
               f"--bookcrossing={tiny_data[0]}", "--nomyfm", "--nosurprise",
               f"--held_out={request.param}", "--config=epochs=3,embedding_dim=8",
               f"--max_users={MAX_USERS}", f"--json={out / 'rows.json'}",
               f"--markdown={out / 'table.md'}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "rows.json", encoding="utf-8") as f:
        rows = {row["model"]: row for row in json.load(f)["rows"]}
    with open(out / "table.md", encoding="utf-8") as f:
        table = f.read()
    return request.param, rows, table, tiny_data[0]


def _split(dataset, config):
    return split_ratings(dataset, "random", config.validation_fraction, config.test_fraction,
                         False, config.seed)


def _held_out_rows(held_out, data_dir):
    """(train + validation, scored rows) as the benchmark must choose them, built here: the
    inner rows are the data less the real test rows (by source line), split again."""
    dataset = load_dataset(data_dir)
    config = TrainConfig(data_dir=data_dir, split="random", verbose=0)
    if held_out == "inner":
        real_test = _split(dataset, config).test
        kept = dataset.ratings[~dataset.ratings["line"].isin(real_test["line"])]
        dataset = dataclasses.replace(dataset, ratings=kept.reset_index(drop=True))
    splits = _split(dataset, config)
    return pd.concat([splits.train, splits.validation]), splits.test


def test_every_model_is_scored_on_the_held_out_rows(run):
    held_out, rows, _, data_dir = run
    assert set(rows) == {OURS, "popularity (most rated)", "popularity (most interacted)",
                         "global mean"}
    assert {row["held_out"] for row in rows.values()} == {held_out}
    # The global mean of train + validation, scored on the rows picked here by hand: the run
    # scored the (inner) test rows, not the validation or the training rows.
    known, scored = _held_out_rows(held_out, data_dir)
    truth = scored["rating"].to_numpy(np.float64)
    expected = np.sqrt(np.mean((truth - known["rating"].mean()) ** 2))
    assert rows["global mean"]["rmse"] == pytest.approx(expected, rel=1e-6)
    # Ours, after three epochs on a tiny set, is below the global mean on those rows.
    assert rows[OURS]["rmse"] < rows["global mean"]["rmse"]


def test_top_k_is_measured_for_the_sampled_users(run):
    _, rows, _, _ = run
    for name in (OURS, "popularity (most rated)", "popularity (most interacted)"):
        row = rows[name]
        assert 0 < row["users_evaluated"] <= MAX_USERS, name
        for key in ("recall@10", "ndcg@10", "hit_rate@10", "coverage@10", "top_item_share"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
        assert row["top_item_share"] > 0.0, name      # every list holds some item
    assert "rmse" not in rows["popularity (most rated)"]      # a ranker has no rating error


def test_the_markdown_table_has_a_row_per_model(run):
    held_out, rows, table, _ = run
    assert f"Held out: {held_out}." in table
    for name in rows:
        assert f"| {name} | 1 |" in table, name
