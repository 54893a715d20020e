"""LoRA over HTTP with the official ``openai`` client: the body's ``model`` picks the adapter.

The answers must be exactly the Python API's for the same adapter (greedy); adapters load and
unload at run time; an unknown adapter is a 404 that names it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.lora.conftest import greedy
from tests.server.conftest import LiveServer, serve
from vibe_sgl_lite import ModelRunner

pytestmark = pytest.mark.integration
PROMPT = [5, 17, 42, 99, 7, 3]


@pytest.fixture(scope="module")
def live(qwen3_dir: Path, adapters: dict[str, Path]) -> Iterator[LiveServer]:
    paths = {"qv": str(adapters["qv"])}
    with ModelRunner(qwen3_dir, lora_paths=paths, max_total_tokens=2048) as runner:
        with serve(runner) as server:
            yield server


def expected(qwen3_dir: Path, adapters: dict[str, Path], name: str | None) -> list[int]:
    """The Python API's greedy tokens for ``PROMPT`` under adapter ``name``."""
    paths = {n: str(p) for n, p in adapters.items()}
    with ModelRunner(qwen3_dir, lora_paths=paths, max_total_tokens=512) as runner:
        return runner.generate_outputs([PROMPT], greedy(name, 6))[0].token_ids


def test_model_field_picks_the_adapter_and_models_lists_it(
    live: LiveServer, qwen3_dir: Path, adapters: dict[str, Path]
) -> None:
    models = [m.id for m in live.client().models.list().data]
    assert models == ["tiny", "qv"]
    text = {
        name: live.client()
        .completions.create(
            model=name, prompt=PROMPT, max_tokens=6, temperature=0, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
        for name in ("tiny", "qv")
    }
    tok = live.app.state.context.model.tokenizer
    assert text["tiny"] == tok.decode(expected(qwen3_dir, adapters, None))
    assert text["qv"] == tok.decode(expected(qwen3_dir, adapters, "qv"))
    assert text["tiny"] != text["qv"]
    chat = live.client().chat.completions.create(
        model="qv", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert chat.model == "qv"


def test_unknown_adapter_is_a_404_naming_it(live: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError, match="'nope'"):
        live.client().completions.create(model="nope", prompt="x", max_tokens=2)
    status, body = live.request("POST", "/v1/unload_lora_adapter", {"lora_name": "nope"})
    assert status == 404 and "'nope'" in body["error"]["message"]


def test_load_use_and_unload_at_run_time(
    live: LiveServer, qwen3_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    body = {"lora_name": "rs", "lora_path": str(adapters["all_rslora"])}
    assert live.request("POST", "/v1/load_lora_adapter", body)[0] == 200
    assert "rs" in [m.id for m in live.client().models.list().data]
    text = (
        live.client()
        .completions.create(
            model="rs", prompt=PROMPT, max_tokens=6, temperature=0, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
    )
    tok = live.app.state.context.model.tokenizer
    assert text == tok.decode(expected(qwen3_dir, adapters, "all_rslora"))
    status, error = live.request(
        "POST", "/v1/load_lora_adapter", {**body, "lora_name": "x", "lora_path": str(tmp_path)}
    )
    assert status == 400 and "adapter_config.json" in error["error"]["message"]
    assert live.request("POST", "/v1/unload_lora_adapter", {"lora_name": "rs"})[0] == 200
    with pytest.raises(openai.NotFoundError, match="'rs'"):
        live.client().completions.create(model="rs", prompt="x", max_tokens=2)
