"""Export lifecycle: one writer at a time, rollback, pruning, version numbers never reused."""

import json
import os

import pytest

from tte_tfrs.exports import layout, lifecycle
from tte_tfrs.exports.lifecycle import LifecycleError, live_versions
from tte_tfrs.exports.writer import export
from tte_tfrs.serving.recommender import Recommender


def current_version(root):
    return json.load(open(os.path.join(root, "manifest.json")))["version"]


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
    parked = os.listdir(os.path.join(root, layout.ROLLED_BACK))
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
    root = str(tmp_path / "models")
    export(trained, root)
    export(trained, root)
    assert train_script.run(["tte-train", f"--rollback={root}"]) == 0
    assert "version 1 is current again" in capsys.readouterr().out
    assert train_script.run(["tte-train", f"--rollback={root}"]) == 2
    assert "needs a previous one" in capsys.readouterr().err


KILLED_WRITER = r"""
import sys
import tte_tfrs
sys.path.insert(0, sys.argv[3])
from conftest import tiny_config
result = tte_tfrs.train(tiny_config(sys.argv[1], epochs=1))
print("exporting", flush=True)
tte_tfrs.export(result, sys.argv[2])
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_writer_killed_mid_export_leaves_the_earlier_version_intact(trained, tiny_data, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    root = str(tmp_path / "models")
    export(trained, root)
    manifest_before = open(os.path.join(root, "manifest.json")).read()
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, tiny_data[0], root, os.path.dirname(__file__)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and writer.poll() is None:
            if any(n.startswith(".staging-") and os.listdir(os.path.join(root, n))
                   for n in os.listdir(root)):
                break
            time.sleep(0.01)
        assert writer.poll() is None, "the writer finished before it could be killed"
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert live_versions(root) == [1]
    assert open(os.path.join(root, "manifest.json")).read() == manifest_before
    assert Recommender.load(root, backend="exact").recommend(features={"age": 30}, k=3)
    # The OS released the dead writer's lock; the next writer cleans up and writes a complete
    # next version.
    assert export(trained, root).version == 2
    assert live_versions(root) == [1, 2]
    assert not [n for n in os.listdir(root) if n.startswith(".staging-")]


def test_an_incomplete_version_is_removed_and_its_number_not_reused(trained, tmp_path):
    import shutil
    root = str(tmp_path / "models")
    export(trained, root)
    # A writer killed between its renames leaves one model's folder of version 2 behind.
    shutil.copytree(os.path.join(root, "user_tower", "1"), os.path.join(root, "user_tower", "2"))
    assert live_versions(root) == [1]
    assert export(trained, root).version == 3
    assert not os.path.exists(os.path.join(root, "user_tower", "2"))
    assert live_versions(root) == [1, 3]
    assert any(n.startswith("2-uncommitted") for n in os.listdir(os.path.join(root,
                                                                            layout.ROLLED_BACK)))
