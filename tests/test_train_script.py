"""tte-train: flags become a config, the job exports, bad input gets a message and no traceback."""

import json
import os
import subprocess
import sys

from tte_tfrs.scripts import train as train_script


def test_main_trains_and_exports(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "models")
    assert train_script.run(["tte-train", f"--data_dir={tiny_data[0]}", f"--output_dir={out}",
                             "--epochs=1", "--embedding_dim=4", "--batch_size=512", "--verbose=0",
                             "--regularizer=l1", "--regularization=1e-5",
                             "--regularization_scope=table"]) == 0
    printed = capsys.readouterr().out
    assert "two-tower (test)" in printed and "global mean" in printed
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["config"]["regularizer"] == "l1"
    assert manifest["config"]["regularization_scope"] == "table"
    assert manifest["config"]["embedding_dim"] == 4
    logs = os.path.join(out, "logs")                             # TensorBoard logs by default
    assert any(name.startswith("events.") for _, _, files in os.walk(logs) for name in files)


def run_script(*args):
    return subprocess.run([sys.executable, "-m", "tte_tfrs.scripts.train", *args],
                          capture_output=True, text=True, timeout=300)


def test_bad_input_gets_a_clear_message_not_a_traceback(tmp_path):
    missing = run_script(f"--data_dir={tmp_path / 'nope'}", f"--output_dir={tmp_path / 'o'}")
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "Ratings.csv").write_text("User-ID,ISBN,Book-Rating\n1,0195153448,x\n")
    bad = run_script(f"--data_dir={tmp_path / 'bad'}", f"--output_dir={tmp_path / 'o'}")
    assert bad.returncode == 2
    assert "Ratings.csv, line 2" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()
    config = run_script("--embedding_dim=0", f"--output_dir={tmp_path / 'o'}")
    assert config.returncode == 2 and "--embedding_dim: embedding_dim must be" in config.stderr
