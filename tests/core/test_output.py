"""``OutputProcessor`` on its own: finish reasons, their order, text release, timings."""

from __future__ import annotations

import pytest

from vibe_sgl_lite import SamplingParams
from vibe_sgl_lite.core.output import OutputProcessor
from vibe_sgl_lite.core.runner import default_model_path
from vibe_sgl_lite.core.tokenizer import Tokenizer
from vibe_sgl_lite.scheduler import Request, RequestState

pytestmark = pytest.mark.unit

EOS = 0


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_pretrained(default_model_path())


def start(
    processor: OutputProcessor, tokenizer: Tokenizer, request_id: int = 0, **params: object
) -> Request:
    prompt = tokenizer.encode("ROMEO:")
    req = Request(request_id, prompt, SamplingParams(**params))  # type: ignore[arg-type]
    processor.add_request(req)
    return req


def feed(processor: OutputProcessor, req: Request, tokens: list[int]) -> list[bool]:
    """``process`` each token until the request finishes (as the engine does)."""
    finished: list[bool] = []
    for token in tokens:
        finished.append(processor.process(req, token, None))
        if finished[-1]:
            break
    return finished


def test_text_is_released_and_length_finishes(tokenizer: Tokenizer) -> None:
    processor = OutputProcessor(tokenizer, {EOS}, max_model_len=1000)
    tokens = tokenizer.encode(" But soft, what light")
    req = start(processor, tokenizer, max_tokens=len(tokens))
    assert feed(processor, req, tokens) == [False] * (len(tokens) - 1) + [True]
    assert req.finish_reason == "length"
    assert req.state is not RequestState.FINISHED  # the scheduler retires it (owns state)
    assert req.text == req.pending_text == " But soft, what light"
    assert processor.num_generated_tokens == len(tokens) and processor.num_open_streams == 0


def test_eos_stops_and_its_text_is_not_shown(tokenizer: Tokenizer) -> None:
    processor = OutputProcessor(tokenizer, {EOS}, max_model_len=1000)
    tokens = tokenizer.encode(" light")
    req = start(processor, tokenizer)
    assert feed(processor, req, tokens + [EOS]) == [False] * len(tokens) + [True]
    assert req.finish_reason == "stop" and req.text == " light"
    assert req.output_ids == tokens + [EOS]


def test_ignore_eos_keeps_going(tokenizer: Tokenizer) -> None:
    processor = OutputProcessor(tokenizer, {EOS}, max_model_len=1000)
    req = start(processor, tokenizer, ignore_eos=True, max_tokens=3)
    assert feed(processor, req, [EOS, EOS, EOS]) == [False, False, True]
    assert req.finish_reason == "length"


@pytest.mark.parametrize("kind", ["stop_token_ids", "eos", "stop"])
def test_a_stop_on_the_last_allowed_token_is_a_stop(tokenizer: Tokenizer, kind: str) -> None:
    """The docs order the checks: stop first, then length."""
    processor = OutputProcessor(tokenizer, {EOS}, max_model_len=1000)
    tokens = tokenizer.encode(" soft light")
    last = tokens[-1]
    params: dict[str, object] = {"max_tokens": len(tokens)}
    if kind == "stop_token_ids":
        params["stop_token_ids"] = [last]
    elif kind == "stop":
        params["stop"] = tokenizer.decode([last])
    else:
        tokens[-1] = EOS
    req = start(processor, tokenizer, **params)
    assert feed(processor, req, tokens)[-1] is True
    assert req.finish_reason == "stop"


def test_stop_string_split_over_tokens_is_cut(tokenizer: Tokenizer) -> None:
    processor = OutputProcessor(tokenizer, {EOS}, max_model_len=1000)
    tokens = tokenizer.encode(" what light through yonder window")
    req = start(processor, tokenizer, stop="ght thr")
    assert feed(processor, req, tokens) == [False, False, True]  # " what", " light", " through"
    assert req.finish_reason == "stop"
    assert req.text == " what li"


def test_max_model_len_finishes_as_length(tokenizer: Tokenizer) -> None:
    prompt_len = len(tokenizer.encode("ROMEO:"))
    processor = OutputProcessor(tokenizer, {EOS}, max_model_len=prompt_len + 2)
    req = start(processor, tokenizer, max_tokens=100)
    assert feed(processor, req, tokenizer.encode(" a b")[:2]) == [False, True]
    assert req.finish_reason == "length"


def test_abort_ends_the_stream_without_timings(tokenizer: Tokenizer) -> None:
    processor = OutputProcessor(tokenizer, {EOS}, max_model_len=1000)
    req = start(processor, tokenizer)
    processor.process(req, tokenizer.encode(" a")[0], None)
    processor.abort(req)
    assert req.finish_reason == "abort"
    assert processor.num_open_streams == 0
    assert processor.mean_timings()["mean_time_to_first_token"] == 0.0


def test_timings_are_averaged_over_finished_requests(tokenizer: Tokenizer) -> None:
    processor = OutputProcessor(tokenizer, {EOS}, max_model_len=1000)
    for i in range(2):
        req = start(processor, tokenizer, request_id=i, max_tokens=2)
        req.arrival_time = 0.0
        feed(processor, req, tokenizer.encode(" a b")[:2])
        assert req.first_token_time is not None
    timings = processor.mean_timings()
    assert timings["mean_time_to_first_token"] > 0
    assert set(timings) == {
        "mean_queue_time",
        "mean_time_to_first_token",
        "mean_time_per_output_token",
    }
