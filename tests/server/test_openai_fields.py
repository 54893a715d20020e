"""Every field the OpenAI endpoints accept, sent by the official ``openai`` client to a live
server, has its effect: the answer equals what ``ModelRunner`` computes for the same
``SamplingParams``, and differs from the answer without the field.

The served model has random weights, so texts are byte soup; they are still exact: greedy and
seeded sampling replay token for token whatever else shares a batch.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest

from tests.server.conftest import MODEL, PROMPTS, LiveServer
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.core.output import GenerationOutput

CHAT = [{"role": "user", "content": "Tell me about KV caches."}]
SAMPLED = {"temperature": 1.0, "seed": 7}


def split(create: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as keyword arguments of the client's ``create``: those it has no parameter
    for (the engine's ``top_k``..., ``response_format`` of completions) go in ``extra_body``,
    as with vLLM."""
    known = inspect.signature(create).parameters
    extra = {k: v for k, v in fields.items() if k not in known}
    return {**{k: v for k, v in fields.items() if k in known}, "extra_body": extra}


def check_usage(response: Any) -> None:
    usage = response.usage
    assert usage is not None, "a non-streamed response always carries usage"
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens >= len(response.choices)  # one token at least per choice


def complete(server: LiveServer, prompt: Any, **fields: Any) -> Any:
    create = server.client().completions.create
    response = create(model=MODEL, prompt=prompt, **split(create, fields))
    check_usage(response)
    return response


def chat(server: LiveServer, messages: Any = CHAT, **fields: Any) -> Any:
    create = server.client().chat.completions.create
    response = create(model=MODEL, messages=messages, **split(create, fields))
    check_usage(response)
    return response


def stream_completion(server: LiveServer, prompt: Any, **fields: Any) -> list[Any]:
    create = server.client().completions.create
    chunks = create(model=MODEL, prompt=prompt, stream=True, **split(create, fields))
    return list(chunks)


def stream_chat(server: LiveServer, messages: Any = CHAT, **fields: Any) -> list[Any]:
    create = server.client().chat.completions.create
    chunks = create(model=MODEL, messages=messages, stream=True, **split(create, fields))
    return list(chunks)


def joined(chunks: list[Any], chat_stream: bool) -> str:
    if chat_stream:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return "".join(c.choices[0].text for c in chunks if c.choices)


def chat_ids(reference: ModelRunner, messages: list[dict[str, str]] = CHAT) -> list[int]:
    tok = reference.tokenizer
    return tok.encode(tok.apply_chat_template(messages), add_special_tokens=False)


def expected(reference: ModelRunner, prompt: str | list[int], **params: Any) -> GenerationOutput:
    return reference.generate_outputs([prompt], SamplingParams(**params))[0]


def ask(server: LiveServer, endpoint: str, prompt: str, **fields: Any) -> tuple[str, str]:
    """(text, finish_reason) of the first choice: ``prompt`` sent as the completion's prompt,
    or as the user's one message to the chat endpoint."""
    if endpoint == "chat":
        choice = chat(server, [{"role": "user", "content": prompt}], **fields).choices[0]
        return str(choice.message.content), str(choice.finish_reason)
    choice = complete(server, prompt, **fields).choices[0]
    return choice.text, choice.finish_reason


def asked(reference: ModelRunner, endpoint: str, prompt: str, **params: Any) -> tuple[str, str]:
    """What ``ask`` must answer, computed by ``reference``."""
    ids = chat_ids(reference, [{"role": "user", "content": prompt}])
    out = expected(reference, ids if endpoint == "chat" else prompt, **params)
    return out.text, str(out.finish_reason)


ENDPOINTS = ["completions", "chat"]


# ---- greedy parity ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_completions_greedy_equal_generate(
    server: LiveServer, reference: ModelRunner, stream: bool
) -> None:
    for prompt in PROMPTS[:5]:
        want = expected(reference, prompt, temperature=0, max_tokens=24)
        if stream:
            chunks = stream_completion(server, prompt, temperature=0, max_tokens=24)
            assert joined(chunks, chat_stream=False) == want.text
            assert chunks[-1].choices[0].finish_reason == want.finish_reason
        else:
            response = complete(server, prompt, temperature=0, max_tokens=24)
            assert response.choices[0].text == want.text
            assert response.choices[0].finish_reason == want.finish_reason
            assert response.usage.prompt_tokens == len(want.prompt_token_ids)
            assert response.usage.completion_tokens == len(want.token_ids)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_greedy_equal_runner_chat(
    server: LiveServer, reference: ModelRunner, stream: bool
) -> None:
    for content in PROMPTS[:3]:
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": content},
        ]
        want = reference.chat(messages, temperature=0, max_tokens=16)
        if stream:
            chunks = stream_chat(server, messages, temperature=0, max_tokens=16)
            assert chunks[0].choices[0].delta.role == "assistant"
            assert joined(chunks, chat_stream=True) == want
            assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        else:
            response = chat(server, messages, temperature=0, max_tokens=16)
            assert response.choices[0].message.role == "assistant"
            assert response.choices[0].message.content == want
            assert response.usage.prompt_tokens == len(chat_ids(reference, messages))


def test_chat_content_parts_are_joined(server: LiveServer, reference: ModelRunner) -> None:
    """What many OpenAI clients send: ``content`` as a list of text parts."""
    parts = [{"type": "text", "text": "Once upon"}, {"type": "text", "text": " a time"}]
    messages = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}]
    messages.append({"role": "user", "content": parts})
    plain = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Once upon a time"},
    ]
    want = reference.chat(plain, temperature=0, max_tokens=8)
    assert chat(server, messages, temperature=0, max_tokens=8).choices[0].message.content == want


def test_prompt_shapes(server: LiveServer, reference: ModelRunner) -> None:
    """A list of strings, token ids, and a list of token-id lists: one choice per prompt."""
    texts = PROMPTS[:3]
    ids = [reference.tokenizer.encode(p) for p in texts]
    want = [expected(reference, p, temperature=0, max_tokens=8).text for p in texts]
    for prompt in (texts, ids):
        response = complete(server, prompt, temperature=0, max_tokens=8)
        assert [c.text for c in response.choices] == want
        assert [c.index for c in response.choices] == [0, 1, 2]
        assert response.usage.prompt_tokens == sum(len(i) for i in ids)
    single = complete(server, ids[0], temperature=0, max_tokens=8)
    assert [c.text for c in single.choices] == want[:1]


# ---- n, max_tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_n_choices(server: LiveServer, endpoint: str) -> None:
    def texts(**fields: Any) -> list[str]:
        if endpoint == "chat":
            response = chat(server, n=3, max_tokens=12, **fields)
            assert [c.index for c in response.choices] == [0, 1, 2]
            return [c.message.content for c in response.choices]
        response = complete(server, PROMPTS[0], n=3, max_tokens=12, **fields)
        assert [c.index for c in response.choices] == [0, 1, 2]
        return [c.text for c in response.choices]

    sampled = texts(temperature=1.0, seed=3)
    assert len(set(sampled)) == 3, sampled
    assert texts(temperature=1.0, seed=3) == sampled  # one seed replays all n choices
    greedy = texts(temperature=0)
    assert len(greedy) == 3 and len(set(greedy)) == 1


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_n_streamed(server: LiveServer, endpoint: str) -> None:
    fields: dict[str, Any] = {"n": 2, "temperature": 1.0, "seed": 3, "max_tokens": 12}
    by_choice = {0: "", 1: ""}
    if endpoint == "chat":
        for chunk in stream_chat(server, **fields):
            for choice in chunk.choices:
                by_choice[choice.index] += choice.delta.content or ""
        want = [c.message.content for c in chat(server, **fields).choices]
    else:
        for chunk in stream_completion(server, PROMPTS[0], **fields):
            for choice in chunk.choices:
                by_choice[choice.index] += choice.text
        want = [c.text for c in complete(server, PROMPTS[0], **fields).choices]
    assert [by_choice[0], by_choice[1]] == want
    assert want[0] != want[1]


def test_max_tokens(server: LiveServer) -> None:
    response = complete(server, PROMPTS[1], max_tokens=5, ignore_eos=True)
    assert response.usage.completion_tokens == 5
    assert response.choices[0].finish_reason == "length"
    response = chat(server, max_tokens=6, ignore_eos=True)
    assert response.usage.completion_tokens == 6
    assert response.choices[0].finish_reason == "length"


def test_max_completion_tokens_wins_over_max_tokens(server: LiveServer) -> None:
    response = chat(server, max_completion_tokens=4, max_tokens=9, ignore_eos=True)
    assert response.usage.completion_tokens == 4
    assert response.choices[0].finish_reason == "length"


# ---- sampling fields -------------------------------------------------------------------------

EFFECTS = [
    ("temperature", {"temperature": 0.3, "seed": 7}, SAMPLED),
    ("top_p", {**SAMPLED, "top_p": 0.5}, SAMPLED),
    ("top_k", {**SAMPLED, "top_k": 3}, SAMPLED),
    ("min_p", {**SAMPLED, "min_p": 0.3}, SAMPLED),
    # The penalties act on repeats, which greedy decoding of this model is full of.
    ("presence_penalty", {"temperature": 0, "presence_penalty": 2.0}, {"temperature": 0}),
    ("frequency_penalty", {"temperature": 0, "frequency_penalty": 2.0}, {"temperature": 0}),
    ("repetition_penalty", {"temperature": 0, "repetition_penalty": 1.5}, {"temperature": 0}),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("name, fields, baseline", EFFECTS, ids=[e[0] for e in EFFECTS])
def test_sampling_field_effect(
    server: LiveServer,
    reference: ModelRunner,
    endpoint: str,
    name: str,
    fields: dict[str, Any],
    baseline: dict[str, Any],
) -> None:
    text = ask(server, endpoint, PROMPTS[3], max_tokens=40, **fields)
    assert text == asked(reference, endpoint, PROMPTS[3], max_tokens=40, **fields)
    assert text != ask(
        server, endpoint, PROMPTS[3], max_tokens=40, **baseline
    ), f"{name}: no effect"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_seed_reproducible(server: LiveServer, reference: ModelRunner, endpoint: str) -> None:
    first, again, other = (
        ask(server, endpoint, PROMPTS[0], temperature=1.0, seed=seed, max_tokens=16)
        for seed in (11, 11, 12)
    )
    assert (
        first
        == again
        == asked(reference, endpoint, PROMPTS[0], temperature=1.0, seed=11, max_tokens=16)
    )
    assert first != other


# ---- stopping --------------------------------------------------------------------------------


def ascii_pair_at(text: str, start: int) -> str:
    """The first two-character printable ASCII substring of ``text`` from ``start``."""
    for i in range(start, len(text) - 1):
        pair = text[i : i + 2]
        if pair.isascii() and pair.isprintable() and pair.strip():
            return pair
    raise AssertionError(f"no ASCII pair in {text!r}")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_stop_strings(server: LiveServer, reference: ModelRunner, endpoint: str) -> None:
    full, _ = asked(reference, endpoint, PROMPTS[4], temperature=0, max_tokens=32)
    first, second = ascii_pair_at(full, 4), ascii_pair_at(full, 12)
    cut = min(full.find(first), full.find(second))

    def served(stop: str | list[str]) -> tuple[str, str]:
        return ask(server, endpoint, PROMPTS[4], temperature=0, max_tokens=32, stop=stop)

    assert served(first) == (full[: full.find(first)], "stop")
    assert served([second, first]) == (full[:cut], "stop")
    assert served("never in this text \u2603") == (full, "length")


def test_stop_token_ids(server: LiveServer, reference: ModelRunner) -> None:
    full = expected(reference, PROMPTS[2], temperature=0, max_tokens=16)
    stop_id = full.token_ids[4]
    want = expected(reference, PROMPTS[2], temperature=0, max_tokens=16, stop_token_ids=[stop_id])
    response = complete(server, PROMPTS[2], temperature=0, max_tokens=16, stop_token_ids=[stop_id])
    assert response.choices[0].text == want.text
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens == full.token_ids.index(stop_id) + 1 < 16


def test_ignore_eos(server: LiveServer, reference: ModelRunner) -> None:
    """A +100 bias makes EOS the only choice: the request ends at once, unless ``ignore_eos``."""
    (eos,) = reference.tokenizer.eos_token_ids
    bias = {str(eos): 100}
    stopped = complete(server, PROMPTS[0], max_tokens=6, logit_bias=bias)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens == 1
    kept = complete(server, PROMPTS[0], max_tokens=6, logit_bias=bias, ignore_eos=True)
    assert kept.choices[0].finish_reason == "length"
    assert kept.usage.completion_tokens == 6


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_logit_bias_forces_token(server: LiveServer, reference: ModelRunner, endpoint: str) -> None:
    token = reference.tokenizer.encode("The quick")[0]
    text = reference.tokenizer.decode([token])
    assert text == "The"
    forced = ask(server, endpoint, PROMPTS[1], max_tokens=5, logit_bias={str(token): 100})
    assert forced == (text * 5, "length")
    assert ask(server, endpoint, PROMPTS[1], max_tokens=5, logit_bias={str(token): -100}) != forced


# ---- logprobs, echo, usage, response_format, user ----------------------------------------------


def test_chat_logprobs_equal_runner(server: LiveServer, reference: ModelRunner) -> None:
    want = expected(reference, chat_ids(reference), temperature=0, max_tokens=8, logprobs=3)
    assert want.logprobs is not None
    response = chat(server, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    content = response.choices[0].logprobs.content
    assert len(content) == len(want.logprobs)
    for entry, lp in zip(content, want.logprobs):
        assert entry.token == reference.tokenizer.decode([lp.token_id], skip_special_tokens=False)
        assert entry.logprob == pytest.approx(lp.logprob, abs=1e-5)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(
            [v for _, v in lp.top], abs=1e-5
        )
        assert [t.token for t in entry.top_logprobs] == [
            reference.tokenizer.decode([t], skip_special_tokens=False) for t, _ in lp.top
        ]
    chunks = stream_chat(server, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    # (a prefix-cache hit computes the prompt in other chunks: logprobs agree to float noise)
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-5)
    plain = chat(server, temperature=0, max_tokens=8)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_equal_runner(server: LiveServer, reference: ModelRunner) -> None:
    prompt = PROMPTS[1]
    want = expected(reference, prompt, temperature=0, max_tokens=8, logprobs=2)
    assert want.logprobs is not None
    logprobs = complete(server, prompt, temperature=0, max_tokens=8, logprobs=2).choices[0].logprobs
    decode = reference.tokenizer.decode
    assert logprobs.tokens == [
        decode([lp.token_id], skip_special_tokens=False) for lp in want.logprobs
    ]
    assert logprobs.token_logprobs == pytest.approx([lp.logprob for lp in want.logprobs], abs=1e-5)
    for top, lp in zip(logprobs.top_logprobs, want.logprobs):
        # keyed by token text, like OpenAI: ids that decode alike share a key
        assert top == pytest.approx(
            {decode([t], skip_special_tokens=False): v for t, v in lp.top}, abs=1e-5
        )
    offsets = [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))]
    assert logprobs.text_offset == offsets
    chunks = stream_completion(server, prompt, temperature=0, max_tokens=8, logprobs=2)
    streamed: dict[str, list[Any]] = {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].logprobs:
            for key in streamed:
                streamed[key] += getattr(chunk.choices[0].logprobs, key)
    for key in ("tokens", "text_offset"):
        assert streamed[key] == getattr(logprobs, key)
    assert streamed["token_logprobs"] == pytest.approx(logprobs.token_logprobs, abs=1e-5)
    for got, want_top in zip(streamed["top_logprobs"], logprobs.top_logprobs, strict=True):
        assert got == pytest.approx(want_top, abs=1e-5)


@pytest.mark.parametrize("stream", [False, True])
def test_echo(server: LiveServer, reference: ModelRunner, stream: bool) -> None:
    prompt = PROMPTS[0]
    want = expected(reference, prompt, temperature=0, max_tokens=8).text
    ids = reference.tokenizer.encode(prompt)
    for sent in (prompt, ids):
        if stream:
            text = joined(
                stream_completion(server, sent, echo=True, temperature=0, max_tokens=8), False
            )
        else:
            text = complete(server, sent, echo=True, temperature=0, max_tokens=8).choices[0].text
        assert text == reference.tokenizer.decode(ids) + want
    assert complete(server, prompt, temperature=0, max_tokens=8).choices[0].text == want


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_stream_include_usage(server: LiveServer, endpoint: str) -> None:
    fields: dict[str, Any] = {"temperature": 0, "max_tokens": 7, "n": 2}
    if endpoint == "chat":
        usage = chat(server, **fields).usage
        with_usage = stream_chat(server, stream_options={"include_usage": True}, **fields)
        without = stream_chat(server, **fields)
    else:
        usage = complete(server, PROMPTS[0], **fields).usage
        with_usage = stream_completion(
            server, PROMPTS[0], stream_options={"include_usage": True}, **fields
        )
        without = stream_completion(server, PROMPTS[0], **fields)
    last = with_usage[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.model_dump() == usage.model_dump()
    assert all(c.usage is None for c in with_usage[:-1])
    assert all(c.usage is None for c in without)


def test_user_accepted(server: LiveServer) -> None:
    plain = complete(server, PROMPTS[0], temperature=0, max_tokens=6)
    tagged = complete(server, PROMPTS[0], temperature=0, max_tokens=6, user="user-1234")
    assert tagged.choices[0].text == plain.choices[0].text
    assert chat(server, temperature=0, max_tokens=6, user="user-1234").choices[0].message.content


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "ok": {"type": "boolean"}},
    "required": ["name", "ok"],
    "additionalProperties": False,
}


FORMATS = [
    ("completions", {"type": "json_object"}),
    ("completions", {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}),
    # (a random model in chat mode writes past any max_tokens inside a free-form object)
    ("chat", {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}),
]


@pytest.mark.parametrize(
    "endpoint, response_format", FORMATS, ids=["json_object", "json_schema", "chat"]
)
def test_response_format(
    server: LiveServer, endpoint: str, response_format: dict[str, Any]
) -> None:
    text, finish = ask(
        server, endpoint, PROMPTS[0], temperature=0, max_tokens=200, response_format=response_format
    )
    assert finish == "stop", text
    value = json.loads(text)
    assert isinstance(value, dict)
    if response_format["type"] == "json_schema":
        assert set(value) == {"name", "ok"} and isinstance(value["ok"], bool)
    unconstrained, _ = ask(server, endpoint, PROMPTS[0], temperature=0, max_tokens=200)
    with pytest.raises(json.JSONDecodeError):
        json.loads(unconstrained)
