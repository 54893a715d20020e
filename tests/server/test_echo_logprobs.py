"""``/v1/completions`` with ``echo`` and ``logprobs``: the prompt scored as transformers scores
it, then the generated tokens, through the official ``openai`` client (what lm-evaluation-harness
sends for multiple-choice tasks)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoTokenizer

from tests.model_factory import load_hf
from tests.server.conftest import MODEL, LiveServer

pytestmark = pytest.mark.integration

PROMPT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def scored(qwen3_dir: Path) -> tuple[list[int], torch.Tensor]:
    """The prompt's ids and transformers' ``log_softmax`` at each position."""
    ids = AutoTokenizer.from_pretrained(str(qwen3_dir))(PROMPT).input_ids
    with torch.no_grad():
        logits = load_hf(qwen3_dir)(torch.tensor([ids])).logits[0]
    return ids, torch.log_softmax(logits.float(), -1)


def _check_prompt_part(logprobs: object, ids: list[int], ref: torch.Tensor) -> None:
    assert logprobs is not None
    values = logprobs.token_logprobs  # type: ignore[attr-defined]
    tops = logprobs.top_logprobs  # type: ignore[attr-defined]
    assert values[0] is None and tops[0] is None
    for pos in range(1, len(ids)):
        assert values[pos] == pytest.approx(float(ref[pos - 1, ids[pos]]), abs=1e-4)
        # keyed by token text, so two ids with one text (random weights) can share an entry
        expected = ref[pos - 1].topk(2).values.tolist()
        assert 1 <= len(tops[pos]) <= 2
        for value in tops[pos].values():
            assert min(abs(value - e) for e in expected) < 1e-4


@pytest.mark.parametrize("as_ids", [False, True])
def test_echo_with_max_tokens_0_scores_the_prompt(
    server: LiveServer, scored: tuple[list[int], torch.Tensor], as_ids: bool
) -> None:
    ids, ref = scored
    out = server.client().completions.create(
        model=MODEL, prompt=ids if as_ids else PROMPT, echo=True, logprobs=2, max_tokens=0
    )
    choice = out.choices[0]
    assert choice.text == PROMPT
    assert choice.logprobs is not None and len(choice.logprobs.tokens) == len(ids)
    assert "".join(choice.logprobs.tokens) == PROMPT
    offsets = choice.logprobs.text_offset
    assert offsets is not None and offsets[0] == 0
    _check_prompt_part(choice.logprobs, ids, ref)
    assert out.usage is not None and out.usage.completion_tokens == 0
    assert out.usage.prompt_tokens == len(ids)


def test_echo_then_generated_tokens(
    server: LiveServer, scored: tuple[list[int], torch.Tensor]
) -> None:
    ids, ref = scored
    client = server.client()
    for _ in range(2):  # the second time the prompt's prefix comes from the prefix cache
        out = client.completions.create(
            model=MODEL, prompt=PROMPT, echo=True, logprobs=2, max_tokens=3, temperature=0
        )
        choice = out.choices[0]
        assert choice.logprobs is not None and choice.logprobs.token_logprobs is not None
        assert len(choice.logprobs.tokens or []) == len(ids) + 3
        assert choice.text.startswith(PROMPT)
        _check_prompt_part(choice.logprobs, ids, ref)
        generated = choice.logprobs.token_logprobs[len(ids) :]
        assert all(isinstance(v, float) for v in generated)
        assert (choice.logprobs.text_offset or [])[len(ids)] == len(PROMPT)
        # greedy: the first generated token is the model's most likely next token
        assert generated[0] == pytest.approx(float(ref[-1].max()), abs=1e-4)


def test_echo_without_logprobs_and_logprobs_without_echo_are_unchanged(
    server: LiveServer,
) -> None:
    client = server.client()
    out = client.completions.create(model=MODEL, prompt=PROMPT, logprobs=1, max_tokens=2)
    assert out.choices[0].logprobs is not None
    assert len(out.choices[0].logprobs.tokens or []) == 2
    out = client.completions.create(model=MODEL, prompt=PROMPT, echo=True, max_tokens=2)
    assert out.choices[0].text.startswith(PROMPT) and out.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"echo": True, "logprobs": 1, "stream": True}, "echo"),
        ({"echo": True, "max_tokens": 0, "stream": True}, "echo"),
        ({"echo": False, "max_tokens": 0}, "max_tokens"),
        ({"echo": True, "logprobs": 6}, "logprobs"),
        ({"echo": True, "logprobs": -1}, "logprobs"),
    ],
)
def test_bad_echo_requests_are_400_naming_the_field(
    server: LiveServer, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().completions.create(model=MODEL, prompt=PROMPT, **kwargs)  # type: ignore[call-overload]
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param  # type: ignore[index]
