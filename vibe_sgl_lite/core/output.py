"""Output processing: what happens to each sampled token, and what the user gets back.

``Engine.step`` calls ``OutputProcessor.process`` once per sampled row::

    process(req, token, logprobs) -> finished?
        append the token (and its logprobs) to the request
        "stop"    the token is an EOS id (unless ignore_eos) or in stop_token_ids,
                  or the text now contains a stop string (cut before it)
        "length"  max_tokens generated, or the sequence reached max_model_len
                  (a token that is both the last allowed and a stop token finishes as "stop")
        detokenise incrementally and release text to ``req.text`` / ``req.pending_text``
        on finish: release held-back text, stamp the time, add the request's timings to
        the totals that ``get_stats`` reports

The per-request text state (incremental detokeniser and stop-string matcher) lives here, keyed
by request id, from ``add_request`` until the request finishes or is aborted; the scheduler's
``Request`` only carries the results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vibe_sgl_lite.core.tokenizer import IncrementalDetokenizer, StopStringMatcher, Tokenizer
from vibe_sgl_lite.sampling import SamplingParams, TokenLogprobs
from vibe_sgl_lite.scheduler.request import Request

TIMINGS = ("queue_time", "time_to_first_token", "time_per_output_token")


@dataclass
class GenerationOutput:
    """What the user gets back for one prompt."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None  # "stop", "length", "abort", a plugin's ("repetition", ...), "error"
    num_cached_tokens: int = 0
    logprobs: list[TokenLogprobs] | None = None
    # one per prompt token, the first None (SamplingParams.prompt_logprobs, core/scoring.py)
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    error: str | None = None
    request_id: int = -1
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def failed(cls, prompt_ids: list[int], error: str) -> GenerationOutput:
        """The output of a request rejected before it was queued."""
        return cls(prompt_ids, [], "", "error", error=error)


@dataclass
class StreamDelta:
    """What a streamed request produced since its previous delta (``ModelRunner.stream_deltas``).

    ``text`` can lag ``token_ids``: text that ends in half a UTF-8 character, or that could be
    the start of a stop string, is held back and arrives with a later delta. ``logprobs`` has one
    entry per token when the request asked for them (``SamplingParams.logprobs``), else none.
    The last delta carries the ``finish_reason`` (and the ``error`` when it is ``"error"``).
    """

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprobs]
    finish_reason: str | None = None
    error: str | None = None


class TextStream:
    """One request's text: token ids -> complete UTF-8 text -> cut at the first stop string."""

    def __init__(self, tokenizer: Tokenizer, params: SamplingParams) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer, params.skip_special_tokens)
        self.stop_matcher = StopStringMatcher(params.stop_strings)

    def add(self, token: int) -> tuple[str, bool]:
        """The text ``token`` completes that is safe to show, and whether a stop string hit."""
        return self.stop_matcher.feed(self.detokenizer.add(token))

    def flush(self) -> str:
        """At the end: whatever was held back (an incomplete character, a partial stop string)."""
        if self.stop_matcher.stopped:
            return ""
        text, stopped = self.stop_matcher.feed(self.detokenizer.flush())
        return text if stopped else text + self.stop_matcher.flush()


class OutputProcessor:
    """Appends sampled tokens, decides finish reasons, releases text, totals the timings."""

    def __init__(self, tokenizer: Tokenizer, eos_token_ids: set[int], max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.num_generated_tokens = 0
        self._streams: dict[int, TextStream] = {}
        self._timing_sums = dict.fromkeys(TIMINGS, 0.0)
        self._timing_counts = dict.fromkeys(TIMINGS, 0)

    @property
    def num_open_streams(self) -> int:
        """Requests whose text is still being produced (0 once every request has ended)."""
        return len(self._streams)

    def add_request(self, req: Request) -> None:
        self._streams[req.request_id] = TextStream(self.tokenizer, req.params)

    def process(
        self,
        req: Request,
        token: int,
        logprobs: TokenLogprobs | None,
        plugin_reason: str | None = None,
    ) -> bool:
        """Record one sampled token of ``req``; returns True when the request has finished.

        ``plugin_reason``: a generation-control plugin finishes the request with this token
        (``"repetition"``, ``"entropy"``, a structured output that is complete: ``"stop"``)."""
        req.token_ids.append(token)
        if logprobs is not None:
            req.logprobs.append(logprobs)
        if req.first_token_time is None:
            req.first_token_time = time.perf_counter()
        self.num_generated_tokens += 1
        params, stream = req.params, self._streams[req.request_id]
        reason = plugin_reason
        if reason is not None:
            _release(req, stream.add(token)[0])
        elif token in (params.stop_token_ids or ()) or (
            not params.ignore_eos and token in self.eos_token_ids
        ):
            reason = "stop"  # the stop token's own text is not shown
        else:
            text, stopped = stream.add(token)
            _release(req, text)
            reason = "stop" if stopped else None
        if reason is None and (
            req.num_output_tokens >= params.max_tokens or len(req.token_ids) >= self.max_model_len
        ):
            reason = "length"
        if reason is None:
            return False
        _release(req, stream.flush())
        self._end(req, reason)
        for name, seconds in req.metrics().items():
            if name in self._timing_sums:
                self._timing_sums[name] += seconds
                self._timing_counts[name] += 1
        return True

    def abort(self, req: Request) -> None:
        """End ``req`` without a finish of its own (a streaming client went away)."""
        self._end(req, req.finish_reason or "abort")

    def fail(self, req: Request, error: str) -> None:
        """End ``req`` with ``finish_reason="error"`` (a plugin raised on it); others go on."""
        req.error = error
        self._end(req, "error")

    def _end(self, req: Request, reason: str) -> None:
        req.finish_reason = reason  # the scheduler, which owns req.state, retires it next
        req.finish_time = time.perf_counter()
        self._streams.pop(req.request_id, None)

    def mean_timings(self) -> dict[str, float]:
        """``mean_<timing>`` over finished requests, in seconds (0.0 before the first)."""
        return {
            f"mean_{name}": self._timing_sums[name] / count if count else 0.0
            for name, count in self._timing_counts.items()
        }

    @staticmethod
    def to_output(req: Request) -> GenerationOutput:
        return GenerationOutput(
            prompt_token_ids=list(req.prompt_ids),
            token_ids=req.output_ids,
            text=req.text,
            finish_reason=req.finish_reason,
            num_cached_tokens=req.first_admission_cached_tokens or 0,
            logprobs=req.logprobs if req.params.logprobs is not None else None,
            prompt_logprobs=req.prompt_logprobs,
            error=req.error,
            request_id=req.request_id,
            metrics=req.metrics(),
        )


def _release(req: Request, text: str) -> None:
    req.text += text
    req.pending_text += text
