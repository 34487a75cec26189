"""Evaluating an export on its own held-out split; the evaluate script; training artefacts."""

import json
import os

import numpy as np
import pytest

from tte_tfrs.evaluation.evaluate import EvaluationConfig, evaluate


@pytest.fixture(scope="module")
def evaluated(exported, trained):
    catalogue = exported.manifest["item_embeddings"]["count"]
    return evaluate(EvaluationConfig(output_dir=exported.output_dir, ks=(1, 10, catalogue))), \
        catalogue


def test_evaluation_reproduces_the_training_metrics(evaluated, trained):
    result, _ = evaluated
    assert result["rows"] == len(trained.splits.test)
    assert result["rmse"] == pytest.approx(trained.metrics["test_rmse"], rel=1e-5)
    assert result["mae"] == pytest.approx(trained.metrics["test_mae"], rel=1e-5)
    assert result["baseline_rmse"] == pytest.approx(trained.metrics["baseline_rmse"], rel=1e-9)


def test_top_k_metrics_are_consistent(evaluated):
    result, catalogue = evaluated
    assert result["users_evaluated"] > 0 and result["relevance_threshold"] == 8.0
    for key in ("recall@10", "precision@10", "ndcg@10", "hit_rate@10", "mrr@10", "coverage@10"):
        assert 0.0 <= result[key] <= 1.0
    curve = result["recall_curve"]
    assert curve[1] <= curve[10] <= curve[catalogue]
    # With every item listed, every held-out relevant item is found: nothing held out is excluded.
    assert curve[catalogue] == pytest.approx(1.0)
    # Per user a hit (0 or 1) bounds both the recalled share and the precision.
    assert result["hit_rate@10"] >= result["recall@10"]
    assert result["hit_rate@10"] >= result["precision@10"]


def test_evaluate_script_writes_json_and_plot(exported, tmp_path, capsys):
    from tte_tfrs.scripts import evaluate as evaluate_script
    out_json, out_png = str(tmp_path / "eval.json"), str(tmp_path / "recall.png")
    assert evaluate_script.run(["tte-evaluate", f"--output_dir={exported.output_dir}",
                                "--backend=exact", f"--json={out_json}", f"--plot={out_png}",
                                "--ks=1,5,10"]) == 0
    assert "recall@10" in capsys.readouterr().out
    saved = json.load(open(out_json))
    assert set(saved["recall_curve"]) == {"1", "5", "10"}
    assert open(out_png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert evaluate_script.run(["tte-evaluate", f"--output_dir={tmp_path / 'none'}"]) == 2
    assert "holds no export" in capsys.readouterr().err


def test_export_keeps_history_and_training_curve(exported, trained):
    folder = os.path.join(exported.output_dir, "training", "1")
    history = json.load(open(os.path.join(folder, "history.json")))
    assert history["val_rmse"] == pytest.approx(trained.history["val_rmse"])
    assert len(history["rmse"]) == trained.metrics["epochs_run"]
    assert open(os.path.join(folder, "training_curve.png"), "rb").read(4) == b"\x89PNG"
    assert np.isfinite(history["total_loss"]).all()


def test_evaluation_refuses_data_whose_split_changed(exported, tiny_data, tmp_path):
    import shutil

    from tte_tfrs.errors import DataError
    data = tmp_path / "data"
    shutil.copytree(tiny_data[0], data)
    with open(data / "Ratings.csv", "a", encoding="utf-8") as f:
        f.write("3,0195153448,9\n")                      # one rating appended
    with pytest.raises(DataError, match="split re-created from this data .* is not the one "
                                        "version 1 was trained with"):
        evaluate(EvaluationConfig(output_dir=exported.output_dir, data_dir=str(data)))
