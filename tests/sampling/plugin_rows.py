"""``Row``: a ``PluginRow`` without an engine, for driving a plugin's hooks directly."""

from __future__ import annotations

from dataclasses import dataclass, field

from vibe_sgl_lite import SamplingParams


@dataclass
class Row:
    """What the engine's ``Request`` shows a plugin: id, params, prompt and output so far."""

    request_id: int
    params: SamplingParams
    prompt_ids: list[int] = field(default_factory=lambda: [1])
    output_ids: list[int] = field(default_factory=list)
