"""Errors that carry a message meant for the person running tte_tfrs.

Every error the package raises on purpose is a `TteError`: the scripts print its message (no
traceback) and exit 2. May import nothing from the package.
"""

from __future__ import annotations

import os


class TteError(Exception):
    """Base class: an error whose message says what is wrong and what to do next."""


class DataError(TteError, ValueError):
    """An input file cannot be used: the message names the file, the line and what was expected."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None,
                 field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        where = self.path
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")


class ConfigError(TteError, ValueError):
    """A configuration value is out of range or inconsistent.

    Attributes:
      field: the setting at fault (scripts name it as ``--field``), when there is one.
    """

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(message)


class ExportError(TteError, ValueError):
    """An export folder cannot be used: missing, damaged, or pointing outside itself.

    The message names the file and what was expected.
    """
