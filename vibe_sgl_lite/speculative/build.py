"""``build_speculator``: the proposer ``speculative_algorithm`` names, checked before use."""

from __future__ import annotations

from pathlib import Path

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.speculative.ngram import NgramProposer
from vibe_sgl_lite.speculative.proposer import Proposer
from vibe_sgl_lite.speculative.speculator import Speculator


def build_speculator(
    config: EngineConfig, max_model_len: int, make_proposer: dict[str, object] | None = None
) -> Speculator | None:
    """The engine's ``Speculator``, or None when ``speculative_algorithm`` is unset."""
    algorithm = config.speculative_algorithm
    if algorithm is None:
        return None
    proposer: Proposer
    if algorithm == "ngram":
        proposer = NgramProposer(config.speculative_ngram_min, config.speculative_ngram_max)
    else:
        raise ValueError(f"speculative_algorithm={algorithm!r} is not available yet")
    return Speculator(
        proposer,
        config.speculative_num_draft_tokens,
        max_model_len,
        config.speculative_disable_batch_size,
    )


__all__ = ["build_speculator", "Path"]
