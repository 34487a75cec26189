"""Faults around an export folder: two writers, readers during export and pruning, a writer killed
at every stage of an export (what TF Serving and our readers see, what the next writer repairs),
file modes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from tte_tfrs import paths
from tte_tfrs.exports import layout, lifecycle
from tte_tfrs.exports.lifecycle import ExportLockedError, LifecycleError
from tte_tfrs.exports.reader import ExportReader, VersionGoneError, read_consistent
from tte_tfrs.exports.writer import export
from tte_tfrs.retrieval.building import build_index
from tte_tfrs.scripts import train as train_script

HOLDER = r"""
import json, os, sys, time
import filelock
root = sys.argv[1]
lock = filelock.FileLock(os.path.join(root, ".lock"), timeout=0)
lock.acquire()
with open(os.path.join(root, ".lock.info"), "w") as f:
    json.dump({"pid": os.getpid(), "host": "here", "since": "now"}, f)
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def root_copy(exported, tmp_path):
    """A copy of the session export; moved, so the next writer's repair points models.config at
    its new place."""
    root = str(tmp_path / "models")
    shutil.copytree(exported.output_dir, root)
    with lifecycle.writer_lock(root):
        assert lifecycle.repair(root) == [os.path.join(root, layout.MODELS_CONFIG)]
    return root


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_second_writer_stops_at_once_and_a_dead_holder_frees_the_lock(root_copy, tmp_path,
                                                                      trained, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, root_copy], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ExportLockedError, match=f"process {holder.pid}"):
            export(trained, root_copy)
        # tte-train takes the lock before anything else: no data read, no logs written.
        assert train_script.run(["tte-train", f"--output_dir={root_copy}",
                                 f"--data_dir={tmp_path / 'no-such-data'}"]) == 2
        error = capsys.readouterr().err
        assert f"being written by process {holder.pid}" in error and "does not exist" not in error
        assert not os.path.exists(os.path.join(root_copy, "logs"))
        with pytest.raises(ExportLockedError):
            lifecycle.prune(root_copy, 1)
        holder.send_signal(signal.SIGKILL)                       # the OS releases its lock
        holder.wait(timeout=30)
        with lifecycle.writer_lock(root_copy):                   # free at once, no stale logic
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_writer_lock_excludes_other_threads_but_is_reentrant(root_copy):
    outcome = []

    def other_writer():
        try:
            with lifecycle.writer_lock(root_copy):
                outcome.append("entered")
        except ExportLockedError:
            outcome.append("refused")

    with lifecycle.writer_lock(root_copy):
        with lifecycle.writer_lock(root_copy):                   # the same thread: re-entrant
            thread = threading.Thread(target=other_writer)
            thread.start()
            thread.join()
    assert outcome == ["refused"]
    other_writer()
    assert outcome == ["refused", "entered"]


def read_all(reader):
    """Everything a consumer reads, SavedModel bytes included."""
    table = reader.item_table
    reader.users, reader.rated, reader.checkpoint()             # noqa: B018
    for model in layout.MODELS:
        folder = reader.saved_model(model)
        for top, _, files in os.walk(folder):
            for name in files:
                with open(os.path.join(top, name), "rb") as f:
                    f.read()
    return reader.version, len(table.ids)


def test_a_pinned_reader_never_sees_a_half_version_while_exports_prune(root_copy, trained):
    pinned = ExportReader(root_copy)
    calls = []

    def load(reader):
        calls.append(reader.version)
        if len(calls) == 1:           # a writer exports and prunes in the middle of this read
            export(trained, root_copy)
            assert lifecycle.prune(root_copy, 1) == [1]
        return read_all(reader)

    assert read_consistent(root_copy, load) == (2, len(ExportReader(root_copy).item_table.ids))
    assert calls == [1, 2]
    with pytest.raises(VersionGoneError, match="version 1 .* was removed while it was being read"):
        pinned.item_table                                        # noqa: B018

    # The same under real concurrency: a writer thread exports and prunes to one version while
    # this thread keeps reading; every read sees one complete version.
    seen, failures, reads = set(), [], 0

    def writer():
        export(trained, root_copy)
        lifecycle.prune(root_copy, 1)

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive() or not reads:
        try:
            seen.add(read_consistent(root_copy, read_all, attempts=5)[0])
        except Exception as exc:                                 # noqa: BLE001
            failures.append(repr(exc))
        reads += 1
        time.sleep(0.02)                                         # leave the writer the GIL too
    thread.join()
    seen.add(read_consistent(root_copy, read_all)[0])
    assert not failures and reads >= 2
    assert seen == {2, 3} and lifecycle.live_versions(root_copy) == [3]


# -- a writer killed at every stage -------------------------------------------------------------

CONFIG_ENTRY = re.compile(r'name: "(\w+)"\s*base_path: "([^"]+)"\s*model_platform: "tensorflow"\s*'
                          r"model_version_policy \{ specific \{ versions: (\d+) \} \}")


def tf_serving_view(snapshot, original):
    """The version TF Serving would serve from `snapshot`, from its models.config: every model
    must name one version whose folder is a complete SavedModel."""
    text = open(os.path.join(snapshot, layout.MODELS_CONFIG)).read()
    entries = CONFIG_ENTRY.findall(text)
    assert sorted(name for name, _, _ in entries) == sorted(layout.MODELS)
    versions = {int(v) for _, _, v in entries}
    assert len(versions) == 1, f"models.config mixes versions {versions}"
    (version,) = versions
    for name, base_path, _ in entries:
        assert base_path == os.path.join(os.path.abspath(original), name)
        folder = os.path.join(snapshot, name, str(version))
        assert os.path.isfile(os.path.join(folder, "saved_model.pb"))
        assert os.path.isfile(os.path.join(folder, "variables", "variables.index"))
    assert os.path.isfile(os.path.join(snapshot, layout.MANIFESTS, f"{version}.json"))
    return version


def test_a_writer_killed_at_any_stage_never_leaves_a_mixed_or_unreadable_version(
        root_copy, trained, tmp_path, monkeypatch, capfd):
    root = root_copy
    snapshots = []

    def snapshot(label):
        target = str(tmp_path / "snapshots" / f"{len(snapshots):02d}-{label}")
        shutil.copytree(root, target, symlinks=True)
        snapshots.append((label, target))

    real_move, real_write, real_temp = (lifecycle.move_into_place, lifecycle.write_atomically,
                                        paths.make_temp_file)

    def move(source, target):
        snapshot(f"before moving {os.path.basename(os.path.dirname(target))}")
        real_move(source, target)

    def write(path, text):
        snapshot(f"before writing {os.path.basename(path)}")
        real_write(path, text)

    def temp(folder, prefix):
        result = real_temp(folder, prefix)
        snapshot(f"after creating {prefix}*")
        return result

    monkeypatch.setattr(lifecycle, "move_into_place", move)
    monkeypatch.setattr(lifecycle, "write_atomically", write)
    monkeypatch.setattr(paths, "make_temp_file", temp)
    capfd.readouterr()
    export(trained, root)
    monkeypatch.undo()
    printed = capfd.readouterr()
    assert "Skipping full serialization" not in printed.err + printed.out      # a quiet export
    snapshot("after the export")
    labels = [label for label, _ in snapshots]
    assert any("moving retrieval" in x for x in labels) and any("models.config" in x for x in labels)

    for label, path in snapshots:
        served = tf_serving_view(path, root)
        reader = ExportReader(path)
        read_all(reader)                                         # our readers: one whole version
        if (served, reader.version) != (1, 2):
            assert served == reader.version, label
        else:                                                    # the one window allowed
            assert "models.config" in label, label
        # The next writer repairs: TF Serving and manifest agree, nothing uncommitted remains,
        # version 2's number stays used once any part of it was visible, rollbacks skip it.
        visible = any(os.path.isdir(os.path.join(path, part, "2")) for part in layout.VERSIONED)
        with lifecycle.writer_lock(path):
            lifecycle.repair(path)
        current = ExportReader(path).version
        assert tf_serving_view(path, path) == current, label
        assert lifecycle.live_versions(path) == list(range(1, current + 1)), label
        assert not [n for n in os.listdir(path) if n.startswith(layout.TEMPORARY_PREFIXES)], label
        assert not [n for n in os.listdir(os.path.join(path, layout.MANIFESTS)) if n[0] == "."]
        assert (2 in lifecycle.used_versions(path)) == (visible or current == 2), label
        if current == 1:
            with pytest.raises(LifecycleError, match="needs a previous one"):
                lifecycle.rollback(path)
        else:
            assert lifecycle.rollback(path) == (2, 1)
            assert tf_serving_view(path, path) == 1 == ExportReader(path).version


def test_files_and_folders_get_the_normal_permissions(root_copy, trained):
    umask = paths.umask()
    build_index(root_copy, "exact")
    for name in (layout.MANIFEST, layout.MODELS_CONFIG, os.path.join(layout.MANIFESTS, "1.json")):
        assert os.stat(os.path.join(root_copy, name)).st_mode & 0o777 == 0o666 & ~umask, name
    for folder in ("index/exact/1", "user_tower/1", "item_embeddings/1"):
        assert os.stat(os.path.join(root_copy, folder)).st_mode & 0o777 == 0o777 & ~umask, folder
    manifest = json.load(open(os.path.join(root_copy, layout.MANIFEST)))
    assert manifest["indexes"]["exact"]["path"] == "index/exact/1"
