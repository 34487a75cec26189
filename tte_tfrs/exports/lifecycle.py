"""The lifecycle of an export folder: one writer at a time, the version switch, rollback, pruning,
repair.

**One writer.** Every writer (training, export, indexing, rollback, pruning) holds
``OUTPUT_DIR/.lock``, an OS file lock (`filelock`): a second writer stops at once with a message
naming the holder, and the OS releases the lock when its holder dies, so there is no stale-lock
logic. `tte-train` takes it before reading any data.

**The version switch** (`commit_version`). Version N is staged in ``.staging-N-*/`` and then

  1. each part is renamed into ``<part>/N`` (TF Serving ignores it: ``models.config`` tells it to
     serve only the current version; our readers ignore it: ``manifest.json`` does not name it);
  2. ``manifests/N.json`` is written;
  3. ``manifest.json`` is replaced by it: the switch for our readers;
  4. ``models.config`` is replaced, naming N for every model (a ``specific`` version policy): the
     switch for TF Serving, which loads the four N models and then unloads N - 1.

Each file is replaced atomically (written beside, fsynced, renamed) with the normal permissions. A
writer killed before step 3 leaves an uncommitted version N: TF Serving never serves it, our readers
never see it, and the next writer's `repair` deletes it (its number stays used). A writer killed
between 3 and 4 leaves ``models.config`` one version behind ``manifest.json`` until the next
writer's `repair` rewrites it. ``manifest.json`` is therefore the truth; `repair` brings everything
else in line with it.

**Readers** never lock (they may have no write access): a reader pins the version
``manifest.json`` names when it opens, and versions are never modified once committed. Pruning and
rollback move a version's folders away part by part, so a reader that loses its version mid-read
gets `VersionGoneError` (never a half-read file), and `tte_tfrs.exports.reader.read_consistent`
then reads the new current version. Writers never wait for readers.

Version numbers are never reused: rolled-back versions are parked in ``.rolled_back/`` (kept for
recovery) and uncommitted ones leave a marker there.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
from collections.abc import Iterator

import filelock

from tte_tfrs import paths
from tte_tfrs.errors import ExportError, TteError
from tte_tfrs.exports.layout import (
    INDEX_ROOT,
    LOCK_FILE,
    LOCK_INFO,
    MANIFEST,
    MANIFESTS,
    MODELS,
    MODELS_CONFIG,
    PRUNING,
    ROLLED_BACK,
    STAGING,
    TEMPORARY_PREFIXES,
    VERSIONED,
    version_number,
)
from tte_tfrs.exports.reader import current_version, read_json, read_manifest


class ExportLockedError(TteError):
    """Another process is writing to the export folder."""


class LifecycleError(TteError):
    """A rollback or prune request cannot be carried out."""


# ---------------------------------------------------------------------------------------------
# Files


def write_atomically(path: str, text: str) -> None:
    """Replaces `path` with `text` in one step (a temporary file beside it, fsync, rename), with
    the permissions of any other new file (0666 less the umask)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = paths.make_temp_file(folder, f".{os.path.basename(path)}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def move_into_place(source: str, target: str) -> None:
    """Renames a staged folder to its final place (one step; `target` must not exist)."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(source, target)


def _json_default(value):
    import numpy as np
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot write {type(value).__name__} to the manifest")


def manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, default=_json_default, allow_nan=False)


def models_config(output_dir: str, version: int) -> str:
    """TF Serving's model_config_list: the four SavedModels, each serving exactly `version`."""
    entries = "".join(
        "  config {\n"
        f"    name: \"{name}\"\n"
        f"    base_path: \"{_proto_string(os.path.join(os.path.abspath(output_dir), name))}\"\n"
        "    model_platform: \"tensorflow\"\n"
        f"    model_version_policy {{ specific {{ versions: {int(version)} }} }}\n"
        "  }\n" for name in MODELS)
    return "model_config_list {\n" + entries + "}\n"


def _proto_string(text: str) -> str:
    """`text` escaped for a double-quoted protobuf text-format string."""
    return "".join("\\\\" if c == "\\" else '\\"' if c == '"' else c if c.isprintable()
                   else "".join(f"\\{b:03o}" for b in c.encode("utf-8")) for c in text)


def write_manifest(output_dir: str, manifest: dict) -> None:
    """Rewrites the current version's manifest (``manifests/<version>.json``, then
    ``manifest.json``), e.g. to record an index. Hold `writer_lock`."""
    text = manifest_text(manifest)
    write_atomically(os.path.join(output_dir, MANIFESTS, f"{manifest['version']}.json"), text)
    write_atomically(os.path.join(output_dir, MANIFEST), text)


def commit_version(output_dir: str, staging: str, version: int, manifest: dict) -> dict[str, str]:
    """Publishes a staged version: parts into place, its manifest, ``manifest.json``, then
    ``models.config`` (see the module docstring for why in this order). Hold `writer_lock`.

    Returns:
      {part: its final folder}.
    """
    text = manifest_text(manifest)                   # refuses NaN before anything is renamed
    placed = {}
    for name in VERSIONED:
        target = os.path.join(output_dir, name, str(version))
        move_into_place(os.path.join(staging, name), target)
        placed[name] = target
    write_atomically(os.path.join(output_dir, MANIFESTS, f"{version}.json"), text)
    write_atomically(os.path.join(output_dir, MANIFEST), text)
    write_atomically(os.path.join(output_dir, MODELS_CONFIG), models_config(output_dir, version))
    return placed


def staging_folder(output_dir: str, version: int) -> str:
    """A fresh folder to stage `version` in (normal permissions)."""
    return paths.make_temp_folder(output_dir, f"{STAGING}{version}-")


# ---------------------------------------------------------------------------------------------
# The writer lock

_LOCKS: dict[str, filelock.FileLock] = {}


@contextlib.contextmanager
def writer_lock(output_dir: str) -> Iterator[None]:
    """Holds the export folder's writer lock (re-entrant within a thread).

    The OS releases the lock if this process dies; nothing needs cleaning up. The folder is
    created if needed.

    Raises:
      ExportLockedError: another process (or thread) holds the lock.
      ConfigError: `output_dir` is a file or cannot be created or written (field ``output_dir``).
    """
    paths.writable_folder(output_dir, "output_dir")
    root = os.path.realpath(output_dir)
    lock = _LOCKS.setdefault(root, filelock.FileLock(os.path.join(root, LOCK_FILE), timeout=0,
                                                     is_singleton=True))
    try:
        lock.acquire()
    except filelock.Timeout:
        raise ExportLockedError(f"{output_dir} is being written by {_holder(root)}; wait for it to "
                                "finish (the lock is released when that process ends)") from None
    try:
        if lock.lock_counter == 1:
            write_atomically(os.path.join(root, LOCK_INFO), json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}))
        yield
    finally:
        lock.release()


def _holder(root: str) -> str:
    try:
        info = read_json(os.path.join(root, LOCK_INFO), "lock holder")
        return f"process {int(info['pid'])} on {str(info['host'])[:100]} since {str(info['since'])[:40]}"
    except (ExportError, KeyError, TypeError, ValueError):
        return "another process"


# ---------------------------------------------------------------------------------------------
# Versions


def _numbers(folder: str) -> set[int]:
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return {v for v in map(version_number, names) if v is not None}


def live_versions(output_dir: str) -> list[int]:
    """Versions whose folders exist for every versioned part, ascending."""
    found = None
    for name in VERSIONED:
        versions = _numbers(os.path.join(output_dir, name))
        found = versions if found is None else found & versions
    return sorted(found or ())


def committed_versions(output_dir: str) -> list[int]:
    """Complete versions a rollback may return to: every part present and a manifest kept, and
    none newer than the current one."""
    current = current_version(output_dir)
    manifests = {version_number(n[:-5]) for n in _listdir(os.path.join(output_dir, MANIFESTS))
                 if n.endswith(".json")}
    return [v for v in live_versions(output_dir)
            if v in manifests and (current is None or v <= current)]


def used_versions(output_dir: str) -> set[int]:
    """Every version number ever written here: in any versioned folder, a manifest, or parked in
    ``.rolled_back/`` (rolled back or abandoned)."""
    used = set()
    for name in _listdir(os.path.join(output_dir, MANIFESTS)):
        if name.endswith(".json") and version_number(name[:-5]) is not None:
            used.add(version_number(name[:-5]))
    for name in _listdir(os.path.join(output_dir, ROLLED_BACK)):
        number = version_number(name.split("-", 1)[0])
        if number is not None:
            used.add(number)
    for name in VERSIONED:
        used |= _numbers(os.path.join(output_dir, name))
    for backend in _listdir(os.path.join(output_dir, INDEX_ROOT)):
        used |= _numbers(os.path.join(output_dir, INDEX_ROOT, backend))
    return used


def _listdir(folder: str) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _version_folders(output_dir: str, version: int) -> list[str]:
    folders = [os.path.join(output_dir, name, str(version)) for name in VERSIONED]
    folders += [os.path.join(output_dir, INDEX_ROOT, backend, str(version))
                for backend in _listdir(os.path.join(output_dir, INDEX_ROOT))]
    return [f for f in folders if os.path.lexists(f)]


def _stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")


def _delete_version(output_dir: str, version: int) -> None:
    """Removes every folder of `version`, each first renamed out of sight in one step, so a reader
    finds each part either whole or gone."""
    for folder in _version_folders(output_dir, version):
        trash = paths.make_temp_folder(output_dir, f"{PRUNING}{version}-")
        os.rename(folder, os.path.join(trash, "part"))
        shutil.rmtree(trash, ignore_errors=True)


def _mark_used(output_dir: str, version: int, why: str) -> None:
    os.makedirs(os.path.join(output_dir, ROLLED_BACK, f"{version}-{why}-{_stamp()}"), exist_ok=True)


def repair(output_dir: str) -> list[str]:
    """Brings an export folder in line with its ``manifest.json`` after a killed writer.

    Removes temporary files and folders (staging, pruning, half-written manifests), deletes every
    version newer than the current one (never committed: TF Serving was never told to serve it,
    and its number stays used), deletes incomplete older versions (an interrupted prune), and
    rewrites ``models.config`` when it does not name the current version. Hold `writer_lock`.

    Returns:
      What was removed or rewritten.
    """
    done = []
    for folder in [output_dir, os.path.join(output_dir, MANIFESTS)] + [
            os.path.join(output_dir, INDEX_ROOT, b) for b in _listdir(os.path.join(output_dir,
                                                                                   INDEX_ROOT))]:
        for name in _listdir(folder):
            if name.startswith(TEMPORARY_PREFIXES) or (folder.endswith(MANIFESTS)
                                                      and name.startswith(".")):
                path = os.path.join(folder, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.remove(path)
                done.append(path)
    current = current_version(output_dir)
    complete = set(live_versions(output_dir))
    everything = set()
    for name in VERSIONED:
        everything |= _numbers(os.path.join(output_dir, name))
    for version in sorted(everything):
        if current is None or version > current:
            why = "uncommitted"
        elif version < current and version not in complete:
            why = "incomplete"
        else:
            continue
        _mark_used(output_dir, version, why)
        done += _version_folders(output_dir, version)
        _delete_version(output_dir, version)
        if why == "uncommitted":
            with contextlib.suppress(OSError):
                os.remove(os.path.join(output_dir, MANIFESTS, f"{version}.json"))
    if current is not None:
        config = os.path.join(output_dir, MODELS_CONFIG)
        expected = models_config(output_dir, current)
        try:
            with open(config, encoding="utf-8") as f:
                actual = f.read()
        except OSError:
            actual = None
        if actual != expected:
            write_atomically(config, expected)
            done.append(config)
    return done


def rollback(output_dir: str) -> tuple[int, int]:
    """Makes the previous committed version current again; returns (rolled back, now current).

    The switch comes first (``manifest.json``, then ``models.config``); the rolled-back version's
    folders are then parked in ``.rolled_back/<version>-<time>/`` for recovery.

    Raises:
      LifecycleError: no current version, or no complete earlier version to return to.
      ExportLockedError: another process is writing.
    """
    with writer_lock(output_dir):
        repair(output_dir)
        current = current_version(output_dir)
        earlier = [v for v in committed_versions(output_dir) if current is not None and v < current]
        if current is None or not earlier:
            raise LifecycleError(f"{output_dir} has no complete version before "
                                 f"{current or 'the current one'}; a rollback needs a previous one")
        previous = earlier[-1]
        text = manifest_text(read_manifest(output_dir, previous))
        write_atomically(os.path.join(output_dir, MANIFEST), text)
        write_atomically(os.path.join(output_dir, MODELS_CONFIG), models_config(output_dir, previous))
        parking = os.path.join(output_dir, ROLLED_BACK, f"{current}-{_stamp()}")
        for folder in _version_folders(output_dir, current):
            move_into_place(folder, os.path.join(parking, os.path.relpath(folder, output_dir)))
        return current, previous


def prune(output_dir: str, keep: int) -> list[int]:
    """Deletes all but the newest `keep` committed versions (never the current one); returns them.

    Raises:
      LifecycleError: `keep` is not a whole number of at least 1.
      ExportLockedError: another process is writing.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise LifecycleError(f"keep_versions must be at least 1 (the current version), got {keep!r}")
    with writer_lock(output_dir):
        repair(output_dir)
        current = current_version(output_dir)
        versions = committed_versions(output_dir)
        removed = [v for v in versions[:-keep] if v != current]
        for version in removed:
            _delete_version(output_dir, version)
        return removed
