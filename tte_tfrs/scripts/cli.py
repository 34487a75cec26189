"""What every tte-* entry point shares: its own flags, ``--help``, and errors as messages.

Each script defines its flags on a `flags.FlagValues` of its own when it runs (so ``tte-train``
knows nothing of ``--k``, and several scripts can live in one process), builds a config from them
and calls one library function. The mapping from a config dataclass to flags is written once here
(`define_config_flags`, `config_values`), over `dataclasses.fields`: a field's type chooses the flag
type, its ``Attributes:`` docstring is the help, and its ``choices`` make an enum.

Exit codes: 0 done, 2 bad input (a flag, a file, a request: the message says which), 1 never on
purpose. This module defines no flags itself.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags, logging

from tte_tfrs.errors import ConfigError, TteError
from tte_tfrs.training.config import field_help

HELP_FLAGS = ("-h", "-help", "--help", "--helpshort", "--helpfull", "-?")
# Flags that name paths: `run` expands ~ and $VARS in them before the script sees them.
PATH_FLAGS = ("data_dir", "output_dir", "tensorboard_dir", "rollback", "warm_start_from", "json",
              "plot", "streaming_dir", "backup_dir")

Main = Callable[[flags.FlagValues], int]


def run(program: str, doc: str, define_flags: Callable[[flags.FlagValues], None], main: Main,
        argv: Sequence[str] | None = None, aliases: dict[str, str] | None = None) -> int:
    """Parses `argv` with the script's own flags and runs `main`; returns the exit code.

    ``--help`` prints `doc` and the script's flags and returns 0. Path flags (`PATH_FLAGS`) have
    ``~`` and environment variables expanded. A bad flag value, a stray argument or a `TteError`
    (bad data, a bad request, a damaged export) prints one line naming the flag, file or field and
    returns 2: never a traceback for bad input. A `ConfigError` about a setting names its flag
    (`aliases` maps settings to flags of another name, e.g. ``log_dir`` to ``tensorboard_dir``).
    """
    argv = list(sys.argv if argv is None else argv)
    values = flags.FlagValues()
    define_flags(values)
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(usage(program, doc, values))
        return 0
    try:
        rest = values(argv)
    except flags.Error as exc:
        return fail(program, f"{exc} (see {program} --help)")
    if len(rest) > 1:
        return fail(program, f"unexpected arguments: {' '.join(rest[1:])}; flags take the form "
                    "--name=value (see --help)")
    for name in PATH_FLAGS:
        if name in values and isinstance(values[name].value, str):
            values[name].value = expand_path(values[name].value)
    logging.set_verbosity(logging.WARNING)
    aliases = aliases or {}
    try:
        return main(values)
    except ConfigError as exc:
        field = aliases.get(exc.field, exc.field)
        flag = f"--{field}: " if field and field in values else ""
        return fail(program, f"{flag}{exc}")
    except (TteError, ValueError, OSError) as exc:
        return fail(program, str(exc))
    except KeyboardInterrupt:
        fail(program, "interrupted; earlier exports are intact (the next writer removes what "
             "this one left)")
        return 130


def fail(program: str, message: str) -> int:
    print(f"{program}: error: {message}", file=sys.stderr)
    return 2


def usage(program: str, doc: str, values: flags.FlagValues) -> str:
    """The script's docstring followed by its flags, sorted, with their defaults."""
    lines = [doc.strip(), "", "Flags:"]
    for name in sorted(values):
        flag = values[name]
        if flag.name != name:            # a short alias
            continue
        default = "" if flag.default is None else f" (default: {flag.default_as_str})"
        lines.append(f"  --{name}: {flag.help}{default}")
    return "\n".join(lines)


def expand_path(value: str | None) -> str | None:
    """A user-given path with ``~`` and environment variables expanded."""
    return None if value is None else os.path.expandvars(os.path.expanduser(value))


def define_config_flags(values: flags.FlagValues, config_class: type, skip: Sequence[str] = (),
                        defaults: dict[str, Any] | None = None,
                        rename: dict[str, str] | None = None) -> None:
    """Defines one flag per field of the dataclass `config_class` (less `skip`).

    Args:
      values: the script's `FlagValues`.
      config_class: a config dataclass with an ``Attributes:`` docstring and ``choices``.
      skip: fields that get no flag.
      defaults: flag defaults that differ from the field defaults.
      rename: field -> flag name, where the flag name differs.
    """
    helps = field_help(config_class)
    hints = typing.get_type_hints(config_class)
    choices = getattr(config_class, "choices", {})
    defaults, rename = defaults or {}, rename or {}
    for field in dataclasses.fields(config_class):
        if field.name in skip:
            continue
        name = rename.get(field.name, field.name)
        default = defaults.get(field.name, field.default)
        help_text = helps.get(field.name, field.name)
        kind = _base_type(hints[field.name])
        common = dict(flag_values=values, module_name=__name__)
        if field.name in choices:
            flags.DEFINE_enum(name, default, list(choices[field.name]), help_text, **common)
        elif kind is bool:
            flags.DEFINE_bool(name, default, help_text, **common)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text, **common)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text, **common)
        elif kind is tuple:
            flags.DEFINE_list(name, [str(v) for v in default], help_text, **common)
        else:
            flags.DEFINE_string(name, default, help_text, **common)


def config_values(values: flags.FlagValues, config_class: type, only_given: bool = False,
                  rename: dict[str, str] | None = None) -> dict[str, Any]:
    """{field: value} from the flags `define_config_flags` defined (only those given, if asked).

    Raises:
      ConfigError: a list flag whose items are not numbers of the field's type.
    """
    hints = typing.get_type_hints(config_class)
    rename = rename or {}
    out = {}
    for field in dataclasses.fields(config_class):
        name = rename.get(field.name, field.name)
        if name not in values or (only_given and not values[name].present):
            continue
        value = values[name].value
        if _base_type(hints[field.name]) is tuple:
            item = typing.get_args(hints[field.name])[0]
            try:
                value = tuple(item(v) for v in value)
            except ValueError:
                raise ConfigError(f"expected comma-separated {item.__name__} values, got "
                                  f"{','.join(value)!r}", field=name) from None
        out[field.name] = value
    return out


def _base_type(hint: Any) -> type:
    """``int`` for ``int`` and ``int | None``, ``tuple`` for ``tuple[int, ...]``, and so on."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        origin = typing.get_origin(hint)
    return origin or hint
