"""Output paths given by users, checked before any work is done, and files created with the
normal permissions.

`writable_folder` is called for every folder a run will write to (export root, TensorBoard logs)
before the data is read or a model trained, so a bad path costs seconds, not a training run.
`make_temp_file` and `make_temp_folder` are `tempfile.mkstemp`/`mkdtemp` with the modes every other
file gets (0666/0777 less the umask): tempfile creates 0600/0700, which a TF Serving process
running as another user could not read once the file is renamed into place.

May import: tte_tfrs.errors.
"""

from __future__ import annotations

import os
import tempfile

from tte_tfrs.errors import ConfigError


def writable_folder(path: str, field: str) -> str:
    """Creates `path` if needed and proves a file can be written in it; returns `path`.

    Raises:
      ConfigError: `path` is empty, is a file, cannot be created or is not writable, naming
        `field` (the setting or flag that gave the path).
    """
    if not isinstance(path, str) or not path.strip():
        raise ConfigError("must be a folder path, got an empty one", field=field)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{path} is a file, not a folder; name a folder", field=field)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder {path} ({exc.strerror or exc})",
                          field=field) from None
    try:
        handle, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write in {path} ({exc.strerror or exc})", field=field) from None
    return path


def writable_file(path: str, field: str) -> str:
    """Checks that `path` can be created or replaced (its folder exists and is writable, and it is
    not a folder); returns `path`. Nothing is written.

    Raises:
      ConfigError: naming `field`.
    """
    if not isinstance(path, str) or not path.strip():
        raise ConfigError("must be a file path, got an empty one", field=field)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a folder; name a file", field=field)
    if not os.path.isdir(folder):
        raise ConfigError(f"the folder of {path} does not exist", field=field)
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"cannot write in {folder}", field=field)
    return path


def umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def make_temp_file(folder: str, prefix: str) -> tuple[int, str]:
    """`tempfile.mkstemp` in `folder`, with mode 0666 less the umask (not 0600)."""
    handle, path = tempfile.mkstemp(dir=folder, prefix=prefix)
    if hasattr(os, "fchmod"):                   # POSIX; Windows has no modes to fix
        os.fchmod(handle, 0o666 & ~umask())
    return handle, path


def make_temp_folder(folder: str, prefix: str) -> str:
    """`tempfile.mkdtemp` in `folder`, with mode 0777 less the umask (not 0700)."""
    path = tempfile.mkdtemp(dir=folder, prefix=prefix)
    os.chmod(path, 0o777 & ~umask())
    return path
