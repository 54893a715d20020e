"""Sampling: per-request parameters and the batched sampler that applies them.

``SamplingParams`` needs no torch, so the CLI can build its flags from it without loading
torch; the sampler's names are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vibe_sgl_lite.sampling.params import FIELD_NAMES, SamplingParams

if TYPE_CHECKING:
    from vibe_sgl_lite.sampling.sampler import Sampler, SamplerOutput, TokenLogprobs

__all__ = ["FIELD_NAMES", "Sampler", "SamplerOutput", "SamplingParams", "TokenLogprobs"]
_LAZY = {"Sampler", "SamplerOutput", "TokenLogprobs"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module("vibe_sgl_lite.sampling.sampler"), name)
    raise AttributeError(f"module 'vibe_sgl_lite.sampling' has no attribute {name!r}")
