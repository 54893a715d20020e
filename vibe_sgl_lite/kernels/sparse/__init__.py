"""Sparse attention on the paged cache: methods that choose which cached keys decode reads.

"dense"        AttentionMethod        every key (the default)
"streaming"    StreamingAttention     attention sinks + a recent window (StreamingLLM)
"quest"        QuestAttention         top pages by a per-page key-bound score (Quest)
"topk_oracle"  TopKOracleAttention    exact top-k keys by true score (an upper bound)
"""

from __future__ import annotations

from vibe_sgl_lite.kernels.sparse.method import (
    AttentionMethod,
    CapturedScores,
    DecodeView,
    KVSelection,
    MethodStats,
    ScoreCapture,
    attend_selection,
)
from vibe_sgl_lite.kernels.sparse.pruning import TokenPruner
from vibe_sgl_lite.kernels.sparse.quest import QuestAttention
from vibe_sgl_lite.kernels.sparse.streaming import StreamingAttention
from vibe_sgl_lite.kernels.sparse.topk_oracle import TopKOracleAttention

ATTENTION_METHODS: dict[str, type[AttentionMethod]] = {
    "dense": AttentionMethod,
    "streaming": StreamingAttention,
    "quest": QuestAttention,
    "topk_oracle": TopKOracleAttention,
}


def make_attention_method(
    name: str,
    *,
    num_sink_tokens: int = 4,
    attention_window: int = 256,
    budget: int | None = None,
    selection_ratio: float | None = None,
) -> AttentionMethod:
    """The method called ``name``, built from the engine's settings of that name."""
    if name == "dense":
        return AttentionMethod()
    if name == "streaming":
        return StreamingAttention(num_sink_tokens, attention_window)
    if name == "quest":
        return QuestAttention(budget, selection_ratio)
    if name == "topk_oracle":
        return TopKOracleAttention(budget, selection_ratio)
    raise ValueError(
        f"attention_method must be one of {', '.join(ATTENTION_METHODS)} or an "
        f"AttentionMethod object, got {name!r}"
    )


__all__ = [
    "ATTENTION_METHODS",
    "AttentionMethod",
    "CapturedScores",
    "DecodeView",
    "KVSelection",
    "MethodStats",
    "QuestAttention",
    "ScoreCapture",
    "StreamingAttention",
    "TokenPruner",
    "TopKOracleAttention",
    "attend_selection",
    "make_attention_method",
]
