"""Options that mean the same wherever they are typed: before the command, after it, or after
its sub-command (``sipconsole --control x.sock ctl dump`` = ``sipconsole ctl dump --control x.sock``).

argparse lets a sub-command's parser overwrite what the main parser read with its own
defaults, so an option typed before the command was silently replaced by a default. Here
each parser level stores an option under its own name (``control@1``) with no default;
:meth:`Options.merge` folds the levels into one value, and refuses an option given twice
with different values, or given to a command it does not apply to, in one line.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from .config import default_control_path, default_db_path

_FLAGS = ("store_true", "store_false")  # take no value (and no metavar)


class OptionError(Exception):
    """An option given where it means nothing, or twice with different values."""


@dataclass
class _Spec:
    flag: str  # as typed: --control
    repeatable: bool  # action="append": the levels' values add up
    default: Any  # what an option nobody gave reads as
    commands: set[str] = field(default_factory=set)  # where it applies ("" = the console)


class Options:
    """The shared options of every ``sipconsole`` command, whichever parser level read them."""

    def __init__(self) -> None:
        self._specs: dict[str, _Spec] = {}

    def level(self, parser: Any, depth: int, command: str | None) -> _Level:
        """Where options are added to ``parser`` (depth 0: before the command). ``command``
        names what they apply to; None adds them without saying (the main parser knows
        every option, each command says which are its own)."""
        return _Level(self, parser, depth, command)

    def merge(self, args: argparse.Namespace, command: str) -> argparse.Namespace:
        """One value per option, whatever level it was typed at; OptionError when that is not possible."""
        given: dict[str, Any] = {}
        out = argparse.Namespace()
        for key, value in sorted(vars(args).items(), key=lambda kv: kv[0].rpartition("@")[2]):
            dest, at, _ = key.rpartition("@")
            if not at:
                setattr(out, key, value)
                continue
            spec = self._specs[dest]
            if command not in spec.commands:
                where = "the console" if command == "" else f"`sipconsole {command}`"
                raise OptionError(f"{spec.flag} does not apply to {where}")
            if dest not in given:
                given[dest] = value
            elif spec.repeatable:  # --listen A serve --listen B: both, in the order typed
                given[dest] = given[dest] + value
            elif given[dest] != value:
                raise OptionError(f"{spec.flag} is given twice with different values "
                                  f"({_shown(given[dest])} and {_shown(value)}): give it once")
        for dest, spec in self._specs.items():
            setattr(out, dest, given.get(dest, spec.default))
        return out


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return repr(value)


class _Level:
    """A parser, or an argument group of it, adding options at one level (see :class:`Options`)."""

    def __init__(self, options: Options, target: Any, depth: int, command: str | None) -> None:
        self._options = options
        self._target = target
        self._depth = depth
        self._command = command

    def add_argument_group(self, title: str) -> _Level:
        return _Level(self._options, self._target.add_argument_group(title), self._depth, self._command)

    def add_argument(self, flag: str, **kwargs: Any) -> None:
        dest = flag.lstrip("-").replace("-", "_")
        action = kwargs.get("action")
        default = False if action == "store_true" else None
        kwargs.pop("default", None)
        if action not in _FLAGS and "choices" not in kwargs:
            kwargs.setdefault("metavar", dest.upper())
        self._target.add_argument(flag, dest=f"{dest}@{self._depth}", default=argparse.SUPPRESS, **kwargs)
        spec = self._options._specs.setdefault(dest, _Spec(flag, action == "append", default))
        if self._command is not None:
            spec.commands.add(self._command)


# The options several commands share, written once.
def add_config(level: Any) -> None:
    level.add_argument("--config", metavar="FILE", help="TOML file with the same keys as the registrar's options")


def add_db(level: Any) -> None:
    level.add_argument("--db", metavar="PATH", help=f"SQLite location database (default {default_db_path()})")


def add_control(level: Any) -> None:
    level.add_argument("--control", metavar="PATH", help=f"control socket (default {default_control_path()})")
