"""Speculative decoding: propose several tokens cheaply, verify them in one target forward.

``speculator.py`` is the engine's seam; ``proposer.py`` the interface the algorithms
implement (``ngram.py``, ``draft_model.py``, ``eagle.py``; the last two draft through
``chain.py``'s loop); ``verify.py`` the acceptance rule that keeps greedy output identical
and sampled output exactly distributed as the target's. See ``docs/speculative.md``.
"""

from vibe_sgl_lite.speculative.ngram import NgramProposer, ngram_lookup
from vibe_sgl_lite.speculative.proposer import Draft, Proposer
from vibe_sgl_lite.speculative.speculator import Speculator
from vibe_sgl_lite.speculative.verify import Verified, accept_sampled, verify

__all__ = [
    "Draft",
    "NgramProposer",
    "Proposer",
    "Speculator",
    "Verified",
    "accept_sampled",
    "ngram_lookup",
    "verify",
]
