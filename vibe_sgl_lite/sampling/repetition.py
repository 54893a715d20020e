"""``RepetitionStop``: end a request whose output has fallen into a loop (``repeat_check``).

A model that starts repeating itself rarely stops before ``max_tokens``; every token after the
loop is visible is wasted compute. With ``b = repeat_block_size``, ``W = repeat_check_window``
and ``m = repeat_min_blocks``, after each sampled token (``output`` = the generated tokens,
including the one just sampled, ``L = len(output)``)::

    window  = output[-min(L, W):]
    k       = len(window) // b                     blocks of b tokens, aligned to the END:
    block j = output[L - (j+1)*b : L - j*b]        j = 0 (newest, ends at the newest token) .. k-1
    a block is "repeated" when it equals at least one other of the k blocks
    finish with finish_reason "repetition" as soon as at least m blocks are repeated

A loop of period ``p`` (tokens distinct within one period) makes blocks ``j`` and ``j'`` equal
exactly when ``(j - j') * b`` is a multiple of ``p``, i.e. every ``q = p / gcd(p, b)`` blocks,
whatever the phase of the loop relative to the blocks. Then ``min(k, 2 * (k - q))`` blocks are
repeated (for ``k > q``), so a loop that fills the output from its start stops when
``L = b * max(m, q + ceil(m / 2))``, provided that is at most ``b * (W // b)``: periods up to about
``W / b - m / 2`` blocks are caught.

Incremental, per request: a polynomial rolling hash of the ``b``-gram ending at each output
position is updated in O(1) per token, and the last ``W`` hashes (and tokens) are kept in
deques. Each step reads the ``k <= W / b`` hashes at the block ends and counts them (a
``Counter``), instead of rescanning ``W`` tokens. Only when the hashes say ``>= m`` repeated
blocks are the blocks compared on the actual tokens (O(W), once per request in practice), so a
hash collision can never stop a request.

Two ways to use it:

* per request: ``SamplingParams(repeat_check=True, repeat_block_size=..., ...)``; the built-in
  instance (name ``"repetition"``, registered on every engine by ``builtin_plugins``) acts on
  exactly those requests, with each request's own settings.
* per runner: ``ModelRunner(plugins=[RepetitionStop(window=..., block_size=..., min_blocks=...)])``
  acts on every request with the given settings (a setting not given comes from the request's
  ``SamplingParams``). Giving any setting makes it a runner-wide instance named
  ``"repetition_all"`` (``name=`` overrides), so it does not clash with the built-in
  ``"repetition"`` (``PluginSet`` refuses two plugins with one name). Its counters appear as
  ``"repetition_all.early_exit_count"``; its finish reason is ``"repetition"`` all the same.

Counters: ``early_exit_count`` (requests it finished) and ``tokens_saved`` (``max_tokens`` minus
the output length at the exit, summed).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

from vibe_sgl_lite.sampling.params import SamplingParams
from vibe_sgl_lite.sampling.plugins import Plugin, PluginRow

FINISH_REASON = "repetition"


@dataclass(frozen=True)
class RepeatSettings:
    """``b``, ``W``, ``m`` of the module docstring."""

    block_size: int
    window: int
    min_blocks: int

    def check(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"repeat_block_size must be an integer >= 1, got {self.block_size}")
        if self.min_blocks < 2:
            raise ValueError(f"repeat_min_blocks must be an integer >= 2, got {self.min_blocks}")
        need = self.block_size * self.min_blocks
        if self.window < need:
            raise ValueError(
                f"repeat_check_window must be an integer >= repeat_block_size * "
                f"repeat_min_blocks ({need}), got {self.window}"
            )


def count_repeated_blocks(output: Sequence[int], settings: RepeatSettings) -> int:
    """How many of the end-aligned blocks of ``output[-W:]`` equal another one (from scratch,
    O(W)): the definition, and the check of a hash match on the actual tokens."""
    b = settings.block_size
    k = min(len(output), settings.window) // b
    n = len(output)
    blocks = [tuple(output[n - (j + 1) * b : n - j * b]) for j in range(k)]
    return sum(c for c in Counter(blocks).values() if c >= 2)


class RollingBlocks:
    """One request's incremental state: ``push`` a token, get the number of repeated blocks.

    ``hashes[-1 - d]`` is the hash of the ``b``-gram ending ``d`` positions before the newest
    token: ``sum(t_i * BASE^(b-1-i)) mod MOD`` over its tokens ``t_0 .. t_{b-1}`` (+1 each, so
    token 0 weighs something). Both deques hold the last ``W`` positions.
    """

    MOD = (1 << 61) - 1  # a Mersenne prime: collisions ~ 2^-61 per pair
    BASE = 1_000_003

    def __init__(self, settings: RepeatSettings) -> None:
        self.settings = settings
        self.length = 0  # output tokens pushed so far
        self.tokens: deque[int] = deque(maxlen=settings.window)
        self.hashes: deque[int] = deque(maxlen=settings.window)
        self._hash = 0  # hash of the (up to) b tokens ending at the newest one
        self._drop = pow(self.BASE, settings.block_size, self.MOD)  # weight of the token leaving

    def push(self, token: int) -> int:
        """Add the next output token; returns how many blocks are repeated now (exact)."""
        b, mod = self.settings.block_size, self.MOD
        h = self._hash * self.BASE + token + 1
        if len(self.tokens) >= b:  # the token b positions back leaves the b-gram
            h -= (self.tokens[-b] + 1) * self._drop
        self._hash = h % mod
        self.tokens.append(token)
        self.hashes.append(self._hash)
        self.length += 1
        k = min(self.length, self.settings.window) // b
        if k < self.settings.min_blocks:
            return 0
        counts = Counter(self.hashes[-1 - j * b] for j in range(k))
        if sum(c for c in counts.values() if c >= 2) < self.settings.min_blocks:
            return 0
        return count_repeated_blocks(list(self.tokens), self.settings)  # rule out a collision


@dataclass
class _State:
    blocks: RollingBlocks
    max_tokens: int


class RepetitionStop(Plugin):
    """Finishes a looping request with ``"repetition"``; see the module docstring."""

    def __init__(
        self,
        window: int | None = None,
        block_size: int | None = None,
        min_blocks: int | None = None,
        *,
        name: str | None = None,
    ) -> None:
        """No setting: the built-in per-request instance (acts when ``params.repeat_check``).
        Any setting: acts on every request, those settings overriding the request's."""
        self.window, self.block_size, self.min_blocks = window, block_size, min_blocks
        self.runner_wide = any(v is not None for v in (window, block_size, min_blocks))
        self.name = name or ("repetition_all" if self.runner_wide else "repetition")
        for field_name, value, low in (
            ("repeat_check_window", window, 2),
            ("repeat_block_size", block_size, 1),
            ("repeat_min_blocks", min_blocks, 2),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < low
            ):
                raise ValueError(f"{field_name} must be an integer >= {low}, got {value!r}")
        if window is not None and block_size is not None and min_blocks is not None:
            RepeatSettings(block_size, window, min_blocks).check()
        self._states: dict[int, _State] = {}
        self.early_exit_count = 0
        self.tokens_saved = 0

    def settings(self, params: SamplingParams) -> RepeatSettings:
        """This instance's settings, each falling back to the request's own field."""
        return RepeatSettings(
            block_size=self.block_size or params.repeat_block_size,
            window=self.window or params.repeat_check_window,
            min_blocks=self.min_blocks or params.repeat_min_blocks,
        )

    def applies(self, params: SamplingParams) -> bool:
        return self.runner_wide or params.repeat_check

    def add_request(self, request_id: int, params: SamplingParams, vocab_size: int) -> None:
        self.settings(params).check()  # a runner's settings mixed with a request's

    def after_token(self, rows: Sequence[PluginRow], tokens: Sequence[int]) -> list[str | None]:
        reasons: list[str | None] = []
        for row, token in zip(rows, tokens):
            state = self._state_of(row)
            repeated = state.blocks.push(token)
            if repeated >= state.blocks.settings.min_blocks:  # the engine ends the request
                self.early_exit_count += 1
                self.tokens_saved += max(0, state.max_tokens - state.blocks.length)
                reasons.append(FINISH_REASON)
            else:
                reasons.append(None)
        return reasons

    def _state_of(self, row: PluginRow) -> _State:
        """The request's state, in step with ``row.output_ids`` (the tokens before this one).

        Built from the existing output on the first call, and rebuilt if it ever drifts (a
        retried call after an error elsewhere in the batch pushed the token twice). The length
        check copies ``output_ids`` (a list slice), negligible next to a forward pass.
        """
        output = row.output_ids
        state = self._states.get(row.request_id)
        if state is None or state.blocks.length != len(output):
            state = _State(RollingBlocks(self.settings(row.params)), row.params.max_tokens)
            for token in output[-state.blocks.settings.window :]:
                state.blocks.push(token)
            state.blocks.length = len(output)
            self._states[row.request_id] = state
        return state

    def release(self, request_id: int) -> None:
        self._states.pop(request_id, None)

    def stats(self) -> dict[str, float]:
        return {"early_exit_count": self.early_exit_count, "tokens_saved": self.tokens_saved}
