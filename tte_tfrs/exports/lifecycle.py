"""The safe lifecycle of an export folder: one writer at a time, versioned manifests, rollback, pruning.

TF Serving serves the highest version folder of each model. A rollback therefore moves the current
version's folders out of sight (into ``.rolled_back/``, kept for recovery) and restores the previous
version's manifest; version numbers are never reused.
"""

import contextlib
import datetime
import json
import os
import re
import shutil
import socket
import tempfile

from tte_tfrs.errors import TteError
from tte_tfrs.exports.layout import INDEX_ROOT, LOCK_FILE, MANIFEST, MANIFESTS, ROLLED_BACK, VERSIONED
from tte_tfrs.exports.reader import current_version


class ExportLockedError(TteError):
    """Another process is writing to the export folder."""


class LifecycleError(TteError):
    """A rollback or prune request cannot be carried out."""


def write_atomically(path, text):
    """Replaces `path` with `text` in one step (write a temporary file, fsync, rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _alive(pid):
    if os.name != "posix":
        return True                      # no cheap check: treat the holder as alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def writer_lock(output_dir):
    """Holds ``OUTPUT_DIR/.lock`` while writing; a second writer fails at once, saying who holds it.

    A lock left behind by a process that no longer runs (on this host) is taken over.

    Raises:
      ExportLockedError: another live process holds the lock.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    holder = json.load(f)
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                os.remove(path)          # stale: its writer died
                continue
            raise ExportLockedError(
                f"{output_dir} is being written by process {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} since {holder.get('since', '?')}; wait for it to finish "
                f"(or remove {path} if that process is gone)") from None
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def write_manifest(output_dir, manifest):
    """Writes ``manifests/<version>.json`` and then the current ``manifest.json``, each atomically."""
    text = json.dumps(manifest, indent=2, default=_json_default)
    write_atomically(os.path.join(output_dir, MANIFESTS, f"{manifest['version']}.json"), text)
    write_atomically(os.path.join(output_dir, MANIFEST), text)


def _json_default(value):
    import numpy as np
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot write {type(value).__name__} to the manifest")


def live_versions(output_dir):
    """Versions whose folders exist for every versioned part, ascending."""
    found = None
    for name in VERSIONED:
        folder = os.path.join(output_dir, name)
        names = os.listdir(folder) if os.path.isdir(folder) else []
        versions = {int(n) for n in names if n.isdigit()}
        found = versions if found is None else found & versions
    return sorted(found or ())


def used_versions(output_dir):
    """Every version number ever written here: in any versioned folder, rolled back or in a
    manifest."""
    used = set()
    for folder, pattern in ((os.path.join(output_dir, MANIFESTS), r"(\d+)\.json"),
                            (os.path.join(output_dir, ROLLED_BACK), r"(\d+)(?:-.*)?")):
        if os.path.isdir(folder):
            used |= {int(m.group(1)) for m in map(lambda n: re.fullmatch(pattern, n),
                                                  os.listdir(folder)) if m}
    for name in VERSIONED:
        folder = os.path.join(output_dir, name)
        if os.path.isdir(folder):
            used |= {int(n) for n in os.listdir(folder) if n.isdigit()}
    return used


def repair(output_dir):
    """Removes what an interrupted writer left: staging folders and incomplete versions.

    Call it holding `writer_lock`. A version is incomplete when some but not all of its folders
    exist (a writer killed between its final renames); the current version is never touched.

    Returns:
      The paths removed.
    """
    removed = []
    for name in os.listdir(output_dir):
        if name.startswith((".staging-", ".old-index-")):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
            removed.append(os.path.join(output_dir, name))
    current = current_version(output_dir)
    complete = set(live_versions(output_dir))
    for name in VERSIONED:
        folder = os.path.join(output_dir, name)
        for entry in os.listdir(folder) if os.path.isdir(folder) else []:
            if entry.isdigit() and int(entry) not in complete and int(entry) != current:
                shutil.rmtree(os.path.join(folder, entry))
                removed.append(os.path.join(folder, entry))
    return removed


def _version_folders(output_dir, version):
    folders = [os.path.join(output_dir, name, str(version)) for name in VERSIONED]
    index_root = os.path.join(output_dir, INDEX_ROOT)
    if os.path.isdir(index_root):
        folders += [os.path.join(index_root, backend, str(version))
                    for backend in sorted(os.listdir(index_root))]
    return [f for f in folders if os.path.exists(f)]


def rollback(output_dir):
    """Makes the previous version current again; returns (rolled back version, now current one).

    Raises:
      LifecycleError: fewer than two versions, or the previous version's manifest is missing.
      ExportLockedError: another process is writing.
    """
    with writer_lock(output_dir):
        versions = live_versions(output_dir)
        if len(versions) < 2:
            raise LifecycleError(f"{output_dir} has {len(versions)} complete version(s); a rollback "
                                 "needs a previous one")
        current, previous = versions[-1], versions[-2]
        previous_manifest = os.path.join(output_dir, MANIFESTS, f"{previous}.json")
        if not os.path.exists(previous_manifest):
            raise LifecycleError(f"{previous_manifest} is missing; cannot restore version {previous}")
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        parking = os.path.join(output_dir, ROLLED_BACK, f"{current}-{stamp}")
        for folder in _version_folders(output_dir, current):
            target = os.path.join(parking, os.path.relpath(folder, output_dir))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.rename(folder, target)
        with open(previous_manifest, encoding="utf-8") as f:
            write_atomically(os.path.join(output_dir, MANIFEST), f.read())
        return current, previous


def prune(output_dir, keep):
    """Deletes all but the newest `keep` live versions (never the current one); returns them.

    Raises:
      LifecycleError: `keep` is below 1.
    """
    if keep < 1:
        raise LifecycleError(f"keep_versions must be at least 1 (the current version), got {keep}")
    with writer_lock(output_dir):
        versions = live_versions(output_dir)
        current = current_version(output_dir)
        removed = [v for v in versions[:-keep] if v != current]
        for version in removed:
            for folder in _version_folders(output_dir, version):
                shutil.rmtree(folder)
        return removed
