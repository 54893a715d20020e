"""``setting``: a dataclass field that documents itself.

Settings dataclasses (``EngineConfig``, ``SamplingParams``) declare each field with its help text
(and allowed choices); the CLI (``cli.add_dataclass_flags``), ``ModelRunner``'s signature and the
docs read them from the field's metadata, so a setting is written down exactly once.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any


def setting(
    default: Any = None,
    help: str = "",
    choices: tuple[str, ...] | None = None,
    default_factory: Any = None,
) -> Any:
    """A dataclass field with ``metadata = {"help": help, "choices": choices}``."""
    metadata = {"help": help, "choices": choices}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)
