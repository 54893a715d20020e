"""Bad requests get OpenAI-shaped errors naming the field, and the server keeps serving; the
API key, the model name, the chat template's absence, and the small endpoints."""

from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.server.conftest import MODEL, PROMPTS, LiveServer, serve, tiny_runner
from vibe_sgl_lite import ModelRunner, SamplingParams

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]
IMAGE_PART = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def body(path: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": MODEL, "max_tokens": 4}
    base.update({"prompt": "Once"} if path == COMPLETIONS else {"messages": USER})
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


BAD = [
    (COMPLETIONS, body(COMPLETIONS, temperature=-1), "temperature"),
    (CHAT, body(CHAT, temperature=-0.5), "temperature"),
    (COMPLETIONS, body(COMPLETIONS, top_p=0), "top_p"),
    (CHAT, body(CHAT, top_p=1.5), "top_p"),
    (COMPLETIONS, body(COMPLETIONS, n=0), "n"),
    (CHAT, body(CHAT, n=-3), "n"),
    (COMPLETIONS, body(COMPLETIONS, n=17), "n"),
    (COMPLETIONS, body(COMPLETIONS, max_tokens=10**9), "max_tokens"),
    (CHAT, body(CHAT, max_tokens=10**9), "max_tokens"),
    (CHAT, body(CHAT, max_completion_tokens=0), "max_completion_tokens"),
    (COMPLETIONS, body(COMPLETIONS, temperature="hot"), "temperature"),
    (COMPLETIONS, body(COMPLETIONS, n="two"), "n"),
    (COMPLETIONS, body(COMPLETIONS, prompt=5), "prompt"),
    (CHAT, body(CHAT, messages="hi"), "messages"),
    (CHAT, body(CHAT, stop=5), "stop"),
    (COMPLETIONS, body(COMPLETIONS, stop=[""]), "stop"),
    (COMPLETIONS, body(COMPLETIONS, best_of=2), "best_of"),
    (CHAT, body(CHAT, foo=1), "foo"),
    (CHAT, {"model": MODEL}, "messages"),
    (CHAT, body(CHAT, messages=[]), "messages"),
    (CHAT, body(CHAT, messages=[{"role": "robot", "content": "hi"}]), "messages"),
    (CHAT, body(CHAT, messages=[{"role": "user", "content": [IMAGE_PART]}]), "messages.0.content"),
    (CHAT, body(CHAT, messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages"),
    (CHAT, body(CHAT, messages=[{"role": "user", "content": ["hi"]}]), "messages"),
    (COMPLETIONS, body(COMPLETIONS, logit_bias={"abc": 5}), "logit_bias"),
    (CHAT, body(CHAT, logit_bias={"1.5": 5}), "logit_bias"),
    (COMPLETIONS, body(COMPLETIONS, logit_bias={"5": 1000}), "logit_bias"),
    (COMPLETIONS, body(COMPLETIONS, logit_bias={"99999": 1}), "logit_bias"),
    (COMPLETIONS, body(COMPLETIONS, seed=-1), "seed"),
    (COMPLETIONS, body(COMPLETIONS, seed=10**30), "seed"),
    (COMPLETIONS, body(COMPLETIONS, top_k=2**64), "top_k"),
    (COMPLETIONS, body(COMPLETIONS, logprobs=6), "logprobs"),
    (CHAT, body(CHAT, logprobs=True, top_logprobs=50), "top_logprobs"),
    (CHAT, body(CHAT, top_logprobs=2), "top_logprobs"),
    (COMPLETIONS, body(COMPLETIONS, prompt=""), "prompt"),
    (COMPLETIONS, body(COMPLETIONS, prompt=[]), "prompt"),
    (COMPLETIONS, body(COMPLETIONS, prompt=[[]]), "prompt"),
    (COMPLETIONS, body(COMPLETIONS, prompt=[99999]), "prompt"),
    (COMPLETIONS, body(COMPLETIONS, prompt=[[1, 2], [99999]]), "prompt"),
    (COMPLETIONS, body(COMPLETIONS, prompt=[-5, 3], echo=True), "prompt"),
    (CHAT, body(CHAT, messages=[{"role": "user", "content": "x " * 1500}]), "messages"),
    (COMPLETIONS, body(COMPLETIONS, response_format={"type": "json_schema"}), "response_format"),
    (
        CHAT,
        body(CHAT, response_format={"type": "json_schema", "json_schema": {"schema": {"type": 1}}}),
        "response_format",
    ),
    (COMPLETIONS, body(COMPLETIONS, regex="(("), "regex"),
    (COMPLETIONS, body(COMPLETIONS, repeat_check_window=2**63), "repeat_check_window"),
]


def assert_error(status: int, payload: Any, want_status: int, param: str | None) -> None:
    assert status == want_status, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if want_status == 400:
        assert error["type"] == "invalid_request_error"
    assert error["param"] == param or (param and error["param"].startswith(param + ".")), error
    if param is not None:
        assert param in error["message"] or error["param"] in error["message"], error


def assert_serving(server: LiveServer) -> None:
    assert server.request("GET", "/health") == (200, {"status": "ok"})
    payload = body(COMPLETIONS, max_tokens=2, ignore_eos=True)  # (no early EOS by chance)
    status, payload = server.request("POST", COMPLETIONS, payload)
    assert status == 200 and payload["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path, payload, param", BAD, ids=[f"{b[0][4:]}-{b[2]}" for b in BAD])
def test_bad_request_400_names_field(
    server: LiveServer, path: str, payload: dict[str, Any], param: str, stream: bool
) -> None:
    """Streamed or not: a refused request never starts a ``200`` event stream."""
    status, answer = server.request("POST", path, {**payload, "stream": stream})
    assert_error(status, answer, 400, param)
    assert_serving(server)


def test_an_image_part_is_refused_by_name(server: LiveServer) -> None:
    payload = body(CHAT, messages=[{"role": "user", "content": [{"type": "text"}, IMAGE_PART]}])
    payload["messages"][0]["content"][0]["text"] = "Describe:"
    status, answer = server.request("POST", CHAT, payload)
    assert_error(status, answer, 400, "messages.0.content")
    assert "part 1 has type 'image_url'" in answer["error"]["message"]


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/v1/no-such-endpoint", 404),
        ("POST", "/v2/completions", 404),
        ("GET", COMPLETIONS, 405),
        ("DELETE", "/v1/models", 405),
        ("POST", "/health", 405),
    ],
)
def test_routing_errors_have_openai_shape(
    server: LiveServer, method: str, path: str, status: int
) -> None:
    """docs/serving.md promises OpenAI's error shape for every error, FastAPI's own included."""
    got, answer = server.request(method, path)
    assert_error(got, answer, status, None)
    assert path in answer["error"]["message"]
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    if status == 405:
        assert response.getheader("allow")  # which methods the path does take


def test_openai_client_raises_bad_request(server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().completions.create(model=MODEL, prompt="Once", temperature=-1)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "temperature"  # type: ignore[index]


@pytest.mark.parametrize(
    "raw",
    [b'{"model": "tiny", "prompt": "x",', b"not json at all", b"", b"[1, 2]", b'"just a string"'],
)
def test_malformed_body(server: LiveServer, raw: bytes) -> None:
    status, answer = server.request("POST", COMPLETIONS, raw)
    assert_error(status, answer, 400, None)
    assert_serving(server)


def test_body_too_large(server: LiveServer) -> None:
    raw = json.dumps(body(COMPLETIONS, prompt="x" * (2 << 20))).encode()
    status, answer = server.request("POST", COMPLETIONS, raw)
    assert_error(status, answer, 413, None)
    assert_serving(server)


def test_unknown_model_404(server: LiveServer) -> None:
    for path in (COMPLETIONS, CHAT):
        status, answer = server.request("POST", path, body(path, model="gpt-4"))
        assert_error(status, answer, 404, "model")
        assert answer["error"]["type"] == "not_found_error"
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="gpt-4", messages=USER)  # type: ignore[arg-type]
    assert_serving(server)


def test_health_and_models(server: LiveServer) -> None:
    assert server.request("GET", "/health") == (200, {"status": "ok"})
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_generate_mirrors_generate_outputs(server: LiveServer, reference: ModelRunner) -> None:
    """``/generate`` is ``generate_outputs`` over HTTP, a refused prompt's output included."""
    prompts: list[Any] = [PROMPTS[0], reference.tokenizer.encode(PROMPTS[1]), ""]
    fields: dict[str, Any] = {"temperature": 0, "max_tokens": 6, "logprobs": 2, "stop": ["zz"]}
    status, answer = server.request(
        "POST", "/generate", {"prompts": prompts, "sampling_params": fields}
    )
    assert status == 200, answer
    want = [asdict(o) for o in reference.generate_outputs(prompts, SamplingParams(**fields))]
    assert [o["finish_reason"] for o in want] == ["length", "length", "error"]
    varying = ("request_id", "metrics", "num_cached_tokens")  # per engine, not per request
    for got, expected in zip(answer, want, strict=True):
        got_lp, want_lp = got.pop("logprobs"), expected.pop("logprobs")
        assert {k: v for k, v in got.items() if k not in varying} == {
            k: v for k, v in expected.items() if k not in varying
        }
        if want_lp is None:
            assert got_lp is None
            continue
        for g, w in zip(got_lp, want_lp, strict=True):
            assert g["token_id"] == w["token_id"]
            assert g["logprob"] == pytest.approx(w["logprob"], abs=1e-5)
            assert [t for t, _ in g["top"]] == [t for t, _ in w["top"]]
    status, answer = server.request(
        "POST", "/generate", {"prompts": "x", "sampling_params": {"bogus": 1}}
    )
    assert_error(status, answer, 400, "sampling_params")
    assert "bogus" in answer["error"]["message"]


# ---- API key ---------------------------------------------------------------------------------

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def keyed_server(qwen3_dir: Path) -> Iterator[LiveServer]:
    with tiny_runner(qwen3_dir) as runner, serve(runner, api_key=KEY) as live:
        yield live


def test_api_key(keyed_server: LiveServer) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
        for method, path in (("GET", "/v1/models"), ("POST", COMPLETIONS), ("POST", "/generate")):
            status, answer = keyed_server.request(method, path, body(COMPLETIONS), headers)
            assert_error(status, answer, 401, None)
            assert answer["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        keyed_server.client(api_key="wrong").completions.create(model=MODEL, prompt="Once")
    right = keyed_server.client().completions.create(model=MODEL, prompt="Once", max_tokens=3)
    assert right.usage is not None and right.usage.completion_tokens >= 1
    assert keyed_server.request("GET", "/health") == (200, {"status": "ok"})  # probes need no key


# ---- chat templates --------------------------------------------------------------------------


def copy_with_template(source: Path, dest: Path, template: str | None) -> Path:
    """``source`` with its chat template replaced (``None``: removed)."""
    shutil.copytree(source, dest)
    (dest / "chat_template.jinja").unlink(missing_ok=True)
    config_file = dest / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    if template is not None:
        config["chat_template"] = template
    config_file.write_text(json.dumps(config))
    return dest


NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system messages') }}"
    "{% endif %}{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
)


@pytest.mark.parametrize("template", [None, NO_SYSTEM_TEMPLATE], ids=["no-template", "raising"])
def test_chat_template_errors_are_400(
    qwen3_dir: Path, tmp_path: Path, template: str | None
) -> None:
    model_dir = copy_with_template(qwen3_dir, tmp_path / "model", template)
    with tiny_runner(model_dir) as runner, serve(runner) as live:
        system = [{"role": "system", "content": "Be brief."}, *USER]
        status, answer = live.request("POST", CHAT, body(CHAT, messages=system))
        assert_error(status, answer, 400, "messages")
        assert ("no chat template" if template is None else "no system messages") in answer[
            "error"
        ]["message"]
        status, answer = live.request("POST", CHAT, body(CHAT))
        assert status == (400 if template is None else 200), answer
        assert_serving(live)
