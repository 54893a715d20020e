"""A test proposer that knows the right answer and lies on purpose, at random positions."""

from __future__ import annotations

import random
from collections.abc import Sequence

from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.scheduler.request import Request
from vibe_sgl_lite.speculative import Draft, Proposer


class ScriptedProposer(Proposer):
    """Proposes the reference continuation (``reference[prompt] = output ids``) of each request,
    then replaces a random draft with a wrong token with probability ``lie``: accept lengths
    are random, from none to all ``k``, so rollback runs at every page offset."""

    name = "scripted"

    def __init__(
        self, reference: dict[tuple[int, ...], list[int]], lie: float, seed: int, vocab: int
    ) -> None:
        self.reference, self.lie, self.vocab = reference, lie, vocab
        self.rng = random.Random(seed)

    def propose(self, requests: Sequence[Request]) -> list[Draft]:
        drafts = []
        for req in requests:
            ref = self.reference.get(tuple(req.prompt_ids), [])
            start = req.num_output_tokens
            tokens = list(ref[start : start + req.num_draft_slots])
            if tokens and self.rng.random() < self.lie:
                j = self.rng.randrange(len(tokens))
                tokens[j] = (tokens[j] + 1 + self.rng.randrange(self.vocab - 1)) % self.vocab
            drafts.append(Draft(tokens))
        return drafts


def script(
    runner: ModelRunner,
    reference: dict[tuple[int, ...], list[int]],
    lie: float,
    seed: int,
    vocab: int | None = None,
) -> None:
    """Make a ``ScriptedProposer`` ``runner``'s proposer (``vocab``: the model's unless given)."""
    engine = runner.engine
    assert engine is not None and engine.speculator is not None
    vocab = engine.model_config.vocab_size if vocab is None else vocab
    engine.speculator.proposer = ScriptedProposer(reference, lie, seed, vocab)
