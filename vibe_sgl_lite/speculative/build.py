"""``build_speculator``: the proposer ``speculative_algorithm`` names, checked before use."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.kernels.attention import AttentionBackend
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.worker import ModelWorker, WorkerSpec
from vibe_sgl_lite.speculative.draft_model import DraftModelProposer
from vibe_sgl_lite.speculative.ngram import NgramProposer
from vibe_sgl_lite.speculative.proposer import Proposer
from vibe_sgl_lite.speculative.speculator import Speculator


@dataclasses.dataclass
class SpeculationTarget:
    """What a proposer needs to know of the target: its settings, shape, vocabulary, pool
    size and attention backend, and (EAGLE) the executor whose model it reads."""

    config: EngineConfig
    model_config: ModelConfig
    vocab_of: Callable[[str], dict[str, int]]  # a folder's tokenizer vocabulary
    num_pages: int
    max_model_len: int
    attention: AttentionBackend
    executor: object
    model_path: str


def build_speculator(target: SpeculationTarget) -> Speculator | None:
    """The engine's ``Speculator``, or None when ``speculative_algorithm`` is unset."""
    config = target.config
    algorithm = config.speculative_algorithm
    if algorithm is None:
        return None
    proposer: Proposer
    if algorithm == "ngram":
        proposer = NgramProposer(config.speculative_ngram_min, config.speculative_ngram_max)
    elif algorithm == "draft":
        proposer = DraftModelProposer(draft_worker(target))
    else:
        from vibe_sgl_lite.speculative.eagle import eagle_proposer

        proposer = eagle_proposer(
            config.speculative_draft_model_path,
            target.model_path,
            target.executor,
            target.model_config,
        )
    return Speculator(
        proposer,
        config.speculative_num_draft_tokens,
        target.max_model_len,
        config.speculative_disable_batch_size,
        config.speculative_adaptive,
    )


def draft_worker(target: SpeculationTarget) -> ModelWorker:
    """The draft model with a KV pool of the target's page ids; refuses another vocabulary."""
    config = target.config
    path = config.speculative_draft_model_path
    assert path is not None  # EngineConfig refuses algorithm="draft" without it
    if not Path(path).exists():
        raise ValueError(f"speculative_draft_model_path {path!r} does not exist")
    draft_config = ModelConfig.from_path(path)
    if draft_config.vocab_size != target.model_config.vocab_size:
        raise ValueError(
            f"speculative_draft_model_path: the draft's vocab_size ({draft_config.vocab_size}) "
            f"differs from the target's ({target.model_config.vocab_size}); a draft model must "
            "share the target's tokenizer"
        )
    if target.vocab_of(path) != target.vocab_of(target.model_path):
        raise ValueError(
            "speculative_draft_model_path: the draft's tokenizer differs from the target's "
            "(same vocab_size, different tokens); a draft model must share the tokenizer"
        )
    local = dataclasses.replace(
        config, tp_size=1, ep_size=1, quantization=None, speculative_algorithm=None
    )
    return ModelWorker(WorkerSpec(path, local, target.num_pages, target.attention))
