"""Export lifecycle: one writer at a time, rollback, pruning, version numbers never reused."""

import json
import os

import pytest
from absl import flags
from absl.testing import flagsaver

from tte_tfrs import lifecycle
from tte_tfrs.export import export
from tte_tfrs.lifecycle import ExportLockedError, LifecycleError, live_versions
from tte_tfrs.recommender import Recommender

FLAGS = flags.FLAGS


def current_version(root):
    return json.load(open(os.path.join(root, "manifest.json")))["version"]


def test_a_second_writer_fails_clearly_and_writes_nothing(trained, tmp_path):
    root = str(tmp_path / "models")
    export(trained, root)
    with lifecycle.writer_lock(root):
        with pytest.raises(ExportLockedError, match=f"process {os.getpid()}"):
            export(trained, root)
        with pytest.raises(ExportLockedError):
            lifecycle.rollback(root)
    assert live_versions(root) == [1] and current_version(root) == 1
    assert not os.path.exists(os.path.join(root, lifecycle.LOCK_FILE))      # released


def test_a_lock_left_by_a_dead_process_is_taken_over(trained, tmp_path):
    root = str(tmp_path / "models")
    os.makedirs(root)
    import socket
    with open(os.path.join(root, lifecycle.LOCK_FILE), "w") as f:
        json.dump({"pid": 2 ** 22 + 12345, "host": socket.gethostname(), "since": "earlier"}, f)
    export(trained, root)
    assert live_versions(root) == [1]


def test_rollback_makes_the_previous_version_current_and_numbers_are_not_reused(trained, exported,
                                                                              tmp_path):
    root = str(tmp_path / "models")
    for _ in range(2):
        export(trained, root)
    with open(os.path.join(root, "manifests", "2.json")) as f:
        assert json.load(f)["version"] == 2
    assert lifecycle.rollback(root) == (2, 1)
    assert live_versions(root) == [1] and current_version(root) == 1
    assert Recommender.load(root, backend="exact").version == 1
    parked = os.listdir(os.path.join(root, lifecycle.ROLLED_BACK))
    assert len(parked) == 1 and parked[0].startswith("2-")
    assert export(trained, root).version == 3                     # 2 is never served again
    with pytest.raises(LifecycleError, match="needs a previous one"):
        lifecycle.rollback(str(tmp_path / "empty"))


def test_prune_keeps_the_newest_versions(trained, tmp_path):
    root = str(tmp_path / "models")
    for _ in range(3):
        export(trained, root)
    assert lifecycle.prune(root, keep=2) == [1]
    assert live_versions(root) == [2, 3] and current_version(root) == 3
    assert lifecycle.prune(root, keep=5) == []
    with pytest.raises(LifecycleError, match="at least 1"):
        lifecycle.prune(root, keep=0)


def test_train_script_rollback_flag(trained, tmp_path, capsys):
    from tte_tfrs.scripts import train as train_script
    if not FLAGS.is_parsed():
        FLAGS.mark_as_parsed()
    root = str(tmp_path / "models")
    export(trained, root)
    export(trained, root)
    with flagsaver.flagsaver(rollback=root):
        assert train_script.main(["tte-train"]) == 0
    assert "version 1 is current again" in capsys.readouterr().out
    with flagsaver.flagsaver(rollback=root):
        assert train_script.main(["tte-train"]) == 2
    assert "needs a previous one" in capsys.readouterr().err
