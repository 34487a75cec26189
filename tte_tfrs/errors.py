"""Errors that carry a message meant for the person running tte_tfrs."""


class TteError(Exception):
    """Base class: an error whose message says what is wrong and what to do next."""


class DataError(TteError, ValueError):
    """An input file cannot be used: the message names the file, the line and what was expected."""

    def __init__(self, path, message, line=None, field=None):
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
    """A configuration value is out of range or inconsistent."""
