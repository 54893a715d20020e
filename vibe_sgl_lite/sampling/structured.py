"""``StructuredOutput``: the plugin behind ``json_schema``, ``regex`` and ``grammar``.

llguidance (a Rust library) compiles the constraint into a matcher that knows, after any prefix
of tokens, which next tokens keep the output inside the language. Per request and step:

    add_request (before queueing) text -> llguidance grammar -> LLMatcher: compiled once, here;
                                  an invalid one raises ValueError naming the field
    process_logits [R, V]         llguidance fills one int32 bitmask [R, ceil(V / 32)] for all R
                                  rows in one call (its own thread pool); tensor ops unpack it to
                                  a bool mask [R, V] and one masked_fill_ sets the rest to -inf
    after_token                   feed the sampled token to the matcher; "stop" when the grammar
                                  admits nothing more (the token's text is still shown)

Rules worth knowing:

* ``json_schema`` output is compact JSON as ``json.dumps`` writes it (``JSON_DEFAULTS``).
* ``grammar`` is GBNF (llama.cpp) when a line reads ``name ::= ...`` and is converted by
  llguidance's ``gbnf_to_lark``; otherwise it is llguidance's Lark dialect (``start: ...``).
* EOS: llguidance allows the EOS ids once the output is complete; a sampled EOS ends the request
  through the engine's normal EOS check (``"stop"``, its text not shown). With ``ignore_eos`` the
  EOS ids are masked out, so the output runs on until the grammar admits nothing more (or
  ``max_tokens``).
* The model's logits may be wider than the tokenizer (a padded embedding): ids the tokenizer does
  not have are never allowed.
* Preemption keeps a request's output tokens, so its matcher stays valid; the matcher's count of
  consumed tokens is checked against the request's output every step.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import llguidance
import llguidance.hf
import torch
from llguidance.gbnf_to_lark import gbnf_to_lark
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vibe_sgl_lite.sampling.params import SamplingParams
from vibe_sgl_lite.sampling.plugins import Plugin, PluginRow

if TYPE_CHECKING:  # a TypedDict of llguidance's type stub only
    from llguidance._lib import JsonCompileOptions

# A GBNF rule definition at the start of a line: `root ::= ...`, `list-item ::= ...`.
_GBNF_RULE = re.compile(r"(?m)^\s*[A-Za-z_][\w-]*\s*::=")

# JSON is written as json.dumps writes it, `{"a": 1, "b": [2, 3]}`: llguidance's default
# allows any run of whitespace between tokens, and a small model at temperature 1 spends its
# max_tokens on it. A schema's "x-guidance" object overrides these (e.g. {"whitespace_flexible":
# true}), since llguidance applies defaults, then x-guidance.
JSON_DEFAULTS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

_WHAT = {
    "json_schema": "a valid JSON schema",
    "regex": "a valid regular expression",
    "grammar": "a valid Lark or GBNF grammar",
}


def constraint_of(params: SamplingParams) -> tuple[str, str]:
    """``(field, llguidance grammar)`` of the request's constraint; ``ValueError`` naming the
    field if its text cannot be turned into one (the matcher checks the rest)."""
    try:
        if params.json_schema is not None:
            field = "json_schema"
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                params.json_schema, defaults=JSON_DEFAULTS
            )
        elif params.regex is not None:
            field = "regex"
            grammar = llguidance.LLMatcher.grammar_from_regex(params.regex)
        elif params.grammar is not None:
            field = "grammar"
            lark = params.grammar
            if _GBNF_RULE.search(lark):
                lark = gbnf_to_lark(lark)
            grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        else:
            raise ValueError("the request has no json_schema, regex or grammar")
    except Exception as exc:  # a schema that is not JSON, GBNF that does not parse
        if not params.structured:
            raise
        raise ValueError(f"{field} must be {_WHAT[field]}; {exc}") from None
    return field, grammar


@dataclass
class _State:
    """One request's matcher and how many of its output tokens the matcher has consumed."""

    field: str
    matcher: llguidance.LLMatcher
    consumed: int = 0


class StructuredOutput(Plugin):
    """Constrains requests with a ``json_schema``, ``regex`` or ``grammar`` (module docstring)."""

    name = "structured_output"

    def __init__(
        self, hf_tokenizer: PreTrainedTokenizerBase, eos_token_ids: Collection[int] = ()
    ) -> None:
        """``eos_token_ids``: the ids that end a request (the engine's); the tokenizer's EOS
        first. Empty: the tokenizer's own EOS."""
        self.hf_tokenizer = hf_tokenizer
        eos = hf_tokenizer.eos_token_id
        first = [int(eos)] if eos is not None else []
        self.eos_token_ids = first + sorted(set(eos_token_ids) - set(first))
        self._tokenizers: dict[int, llguidance.LLTokenizer] = {}  # by n_vocab, built lazily
        self._executor: llguidance.LLExecutor | None = None
        self._bitmask = torch.empty(0, 0, dtype=torch.int32)  # reused CPU buffer [rows, words]
        self._shifts: dict[torch.device, torch.Tensor] = {}  # arange(32) per device
        self._states: dict[int, _State] = {}  # request id -> its matcher
        self.num_requests = 0  # requests that got a matcher
        self.num_compiled = 0  # matchers compiled (one per request)
        self.num_masked_rows = 0

    def applies(self, params: SamplingParams) -> bool:
        return params.structured

    # ---- compiling ---------------------------------------------------------------------------

    def _tokenizer(self, field: str, vocab_size: int) -> llguidance.LLTokenizer:
        """The llguidance view of the vocabulary (about 1 s for 150k tokens: built once).

        ``n_vocab`` is the model's vocabulary (the width of the logits, and of the bitmask);
        llguidance refuses one smaller than the tokenizer, so that is the floor."""
        n_vocab = max(vocab_size, len(self.hf_tokenizer))
        tokenizer = self._tokenizers.get(n_vocab)
        if tokenizer is None:
            hf = self.hf_tokenizer
            if not isinstance(hf, PreTrainedTokenizerFast):  # llguidance reads the Rust one
                raise ValueError(f"{field} needs a fast tokenizer, got {type(hf).__name__}")
            eos = self.eos_token_ids or None
            tokenizer = llguidance.hf.from_tokenizer(hf, n_vocab=n_vocab, eos_token=eos)
            self._tokenizers[n_vocab] = tokenizer
        return tokenizer

    def _compile(self, params: SamplingParams, vocab_size: int) -> _State:
        field, grammar = constraint_of(params)
        matcher = llguidance.LLMatcher(self._tokenizer(field, vocab_size), grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"{field} must be {_WHAT[field]}; {matcher.get_error()}")
        self.num_compiled += 1
        return _State(field, matcher)

    def add_request(self, request_id: int, params: SamplingParams, vocab_size: int) -> None:
        """Compile the constraint now, so that a bad one fails the request before it is queued
        and a good one is compiled once."""
        self._states[request_id] = self._compile(params, vocab_size)
        self.num_requests += 1

    def _state_of(self, row: PluginRow, vocab_size: int) -> _State:
        """The request's state, created once, with every output token consumed."""
        if row.request_id not in self._states:  # not added through PluginSet: compile now
            self.add_request(row.request_id, row.params, vocab_size)
        state = self._states[row.request_id]
        output = row.output_ids
        if state.consumed > len(output) + 1:  # after_token may be one ahead (see there)
            raise RuntimeError(f"the matcher is ahead of the output ({state.consumed} tokens)")
        if state.consumed < len(output):  # the matcher came late: replay the output
            if not state.matcher.consume_tokens(list(output[state.consumed :])):
                raise ValueError(self._rejected(state, output[state.consumed :]))
            state.consumed = len(output)
        return state

    @staticmethod
    def _rejected(state: _State, tokens: Sequence[int]) -> str:
        return (
            f"token(s) {list(tokens)} are not allowed by the request's {state.field}: "
            f"{state.matcher.get_error()}"
        )

    # ---- per step ----------------------------------------------------------------------------

    def _shift(self, device: torch.device) -> torch.Tensor:
        shift = self._shifts.get(device)
        if shift is None:
            shift = self._shifts[device] = torch.arange(32, dtype=torch.int32, device=device)
        return shift

    def _fill_bitmask(self, states: list[_State], vocab_size: int) -> torch.Tensor:
        """``[R, ceil(n_vocab / 32)]`` int32 on the CPU, bit ``t % 32`` of word ``t // 32`` set
        when token ``t`` is allowed; llguidance writes all rows in one call, in parallel."""
        words = (max(vocab_size, len(self.hf_tokenizer)) + 31) // 32
        if self._bitmask.shape[0] < len(states) or self._bitmask.shape[1] != words:
            self._bitmask = torch.empty(max(len(states), 8), words, dtype=torch.int32)
        bitmask = self._bitmask[: len(states)]  # leading rows of a contiguous buffer
        if self._executor is None:
            self._executor = llguidance.LLExecutor()
        self._executor.unsafe_compute_mask_ptr(
            [(s.matcher, i) for i, s in enumerate(states)],
            bitmask.data_ptr(),
            words * 4,
            len(states),
        )
        return bitmask

    def process_logits(self, logits: torch.Tensor, rows: Sequence[PluginRow]) -> torch.Tensor:
        num_rows, vocab = logits.shape
        states = [self._state_of(row, vocab) for row in rows]
        for state in states:
            if state.matcher.is_error():
                raise ValueError(f"the {state.field} matcher failed: {state.matcher.get_error()}")
        bitmask = self._fill_bitmask(states, vocab).to(logits.device)
        bits = (bitmask.unsqueeze(-1) >> self._shift(logits.device)).bitwise_and_(1)  # [R, W, 32]
        allowed = bits.view(num_rows, -1)[:, :vocab].bool()  # [R, V]
        allowed[:, len(self.hf_tokenizer) :] = False  # padded embedding rows: no token
        no_eos = [r for r, row in enumerate(rows) if row.params.ignore_eos]
        if no_eos and self.eos_token_ids:
            eos = [t for t in self.eos_token_ids if t < vocab]
            device = logits.device
            no_eos_rows = torch.tensor(no_eos, device=device)[:, None]
            allowed[no_eos_rows, torch.tensor(eos, dtype=torch.long, device=device)] = False
        logits.masked_fill_(~allowed, float("-inf"))
        self.num_masked_rows += num_rows
        return logits

    def after_token(self, rows: Sequence[PluginRow], tokens: Sequence[int]) -> list[str | None]:
        """Feed each row's token to its matcher; ``"stop"`` once the grammar is complete.

        A token the matcher rejects raises (the engine fails that request). A row already fed
        this token (``PluginSet`` retries a batch row by row after one row raised) is not fed
        again: ``consumed`` is one past the request's output then."""
        reasons: list[str | None] = []
        for row, token in zip(rows, tokens):
            state = self._state_of(row, 0)
            if state.consumed == len(row.output_ids):
                if not state.matcher.consume_token(token):
                    raise ValueError(self._rejected(state, [token]))
                state.consumed += 1
            if not state.matcher.is_stopped():
                reasons.append(None)
            elif token in self.eos_token_ids and not row.params.ignore_eos:
                reasons.append(None)  # the engine's EOS stop ends it, without the EOS's text
            else:
                reasons.append("stop")
        return reasons

    def release(self, request_id: int) -> None:
        self._states.pop(request_id, None)

    def stats(self) -> dict[str, float]:
        return {
            "requests": self.num_requests,
            "compiled": self.num_compiled,
            "masked_rows": self.num_masked_rows,
        }
