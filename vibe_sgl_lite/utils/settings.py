"""``setting``: a dataclass field that documents itself.

Settings dataclasses (``EngineConfig``, ``SamplingParams``) declare each field with its help text
(and allowed choices); the CLI (``cli.add_dataclass_flags``), ``ModelRunner``'s signature and the
docs read them from the field's metadata, so a setting is written down exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any


def setting(
    default: Any = None,
    help: str = "",
    choices: tuple[str, ...] | None = None,
    *,
    cli: bool = True,
    cli_type: Callable[[str], Any] | None = None,
    aliases: tuple[str, ...] = (),
    nargs: str | None = None,
) -> Any:
    """A dataclass field that documents itself.

    ``metadata``: ``help`` and ``choices`` (help text, allowed values), ``cli`` (False: no flag,
    for values only Python can pass), ``cli_type`` (how a flag's text becomes the value when
    the field's type alone cannot say, e.g. a JSON file), ``aliases`` (more spellings of
    the flag, e.g. ``("--threads",)``) and ``nargs`` (a flag taking several words, each
    through ``cli_type``: ``--lora-paths a=/x b=/y``).
    """
    metadata = {
        "help": help,
        "choices": choices,
        "cli": cli,
        "cli_type": cli_type,
        "aliases": aliases,
        "nargs": nargs,
    }
    return field(default=default, metadata=metadata)


def json_arg(text: str) -> Any:
    """A flag holding JSON text (``--logit-bias '{"42": -100}'``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc}): {text!r}") from None


def json_file_arg(text: str) -> Any:
    """A flag naming a JSON file, or holding JSON text itself."""
    path = Path(text)
    return json_arg(path.read_text() if path.is_file() else text)


def text_file_arg(text: str) -> str:
    """A flag naming a text file (a grammar), or holding the text itself."""
    path = Path(text)
    return path.read_text() if path.is_file() else text


def check_int(
    name: str, value: object, minimum: int, or_none: bool = False, maximum: int | None = None
) -> int:
    """``value`` if it is an int in ``[minimum, maximum]``, else ``ValueError`` naming ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        allowed = f"an integer >= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(
            f"{name} must be {allowed}" + (" or None" if or_none else "") + f", got {value!r}"
        )
    return value


def check_fraction(name: str, value: object, *, allow_zero: bool = False) -> float:
    """``value`` if it is a number in (0, 1] (or [0, 1]), else ``ValueError`` naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not ((0.0 <= value if allow_zero else 0.0 < value) and value <= 1.0):  # type: ignore[operator]
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)  # type: ignore[arg-type]
