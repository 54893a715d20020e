"""Flags derived from the settings dataclasses, and the help formatter every subcommand uses.

A setting is written down once, as a dataclass field with its help text (``utils/settings.py``);
``add_dataclass_flags`` turns each field into a flag, so adding an engine setting adds a flag to
``serve``, ``generate``, ``chat`` and ``bench`` without touching this package.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, NoReturn

SAMPLING_FLAG_NAMES = {"seed": "sampling_seed"}
"""Sampling fields whose flag differs from their name (``--seed`` is the engine's)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line: ``error: MESSAGE (see 'PROG
    --help')`` on stderr, exit code 2.

    argparse prints the whole usage block before a bad value's message, which for ``generate``
    is some fifty lines of flags burying the one that matters. Its message already names the
    flag (``argument --temperature: invalid float value: 'abc'``), so the line alone says what
    went wrong, like the errors found after parsing. Subparsers are built from the parser's own
    class, so one subclass covers every subcommand.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``ArgumentDefaultsHelpFormatter``, except where the help already states its default.

    Settings whose default is ``None`` explain it in words (``"(default: the model's max
    positions)"``); appending argparse's ``(default: None)`` after that would say it twice.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_dataclass_flags(
    parser: argparse._ActionsContainer,
    cls: type,
    renamed: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> dict[str, str]:
    """One ``--flag`` per field of dataclass ``cls``; returns ``{dest: field name}``.

    The field's type gives the flag's kind: ``bool`` -> ``--x/--no-x``, ``list[T]`` -> a
    repeatable flag, ``T | None`` -> an optional ``T``. Help text and choices come from the
    field's metadata (``config.setting``) when it has them. ``defaults`` replaces the defaults of
    some fields (a subcommand's own, e.g. ``bench``'s fixed KV pool); their help then shows the
    replacement instead of the field's own "(default: ...)" wording.
    """
    hints = typing.get_type_hints(cls)
    dests: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        dest = (renamed or {}).get(f.name, f.name)
        dests[dest] = f.name
        kind, repeat = _flag_type(hints[f.name])
        if f.metadata.get("cli_type") is not None:
            kind, repeat = f.metadata["cli_type"], False
        help_text = f.metadata.get("help") or f"{cls.__name__}.{f.name}"
        default = f.default
        if defaults is not None and f.name in defaults:
            default, help_text = defaults[f.name], help_text.split(" (default:")[0]
        kwargs: dict[str, Any] = dict(dest=dest, default=default, help=help_text)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            kwargs["choices"] = f.metadata.get("choices")
            kwargs["action"] = "append" if repeat else "store"
            kwargs["default"] = None if repeat else default
            if f.metadata.get("nargs") is not None:
                kwargs["nargs"] = f.metadata["nargs"]
        aliases = f.metadata.get("aliases", ())
        parser.add_argument("--" + dest.replace("_", "-"), *aliases, **kwargs)
    return dests


def _flag_type(hint: Any) -> tuple[type, bool]:
    """``(element type, repeatable)`` of a field annotation such as ``int | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        lists = [a for a in args if typing.get_origin(a) is list]
        if lists:
            return typing.get_args(lists[0])[0], True
        return args[0], False
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True
    return hint, False


def flags_of(instance: Any) -> list[str]:
    """The flags that give ``add_dataclass_flags``'s parser back ``instance``: one per field that
    differs from its default (``serve --dp-size`` hands its settings to each replica so)."""
    argv: list[str] = []
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        default = f.default
        if default is dataclasses.MISSING and callable(f.default_factory):
            default = f.default_factory()
        if not f.metadata.get("cli", True) or value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if value is None:
            raise ValueError(f"{f.name}=None has no flag (its default is {default!r})")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def values_of(args: argparse.Namespace, dests: dict[str, str]) -> dict[str, Any]:
    """``{field name: parsed value}`` for the flags ``add_dataclass_flags`` returned."""
    return {name: getattr(args, dest) for dest, name in dests.items()}
