"""The trained tiny-shakespeare model shipped in the package: a real model, not random weights.

Its peaked distributions make parity a strong check: greedy tokens identical to transformers,
and held-out perplexity from our engine equal to transformers' within 1%.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.model_factory import hf_greedy, load_hf
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.core.runner import default_model_path

pytestmark = pytest.mark.integration

MODEL = default_model_path()
PROMPTS = [
    "ROMEO:",
    "JULIET:\nO Romeo, Romeo!",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "KING HENRY:",
    "To be, or not to be",
    "HAMLET:\nWhat a piece of work is",
    "Enter a Messenger.",
    "MACBETH:\nIs this a dagger",
]


def test_bundled_model_files() -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (MODEL / name).is_file(), name
    config = json.loads((MODEL / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config.get("torch_dtype", config.get("dtype")) == "bfloat16"


def test_greedy_matches_transformers_on_the_trained_model() -> None:
    hf = load_hf(MODEL)
    with ModelRunner(max_total_tokens=4096) as runner:
        ids = [runner.tokenizer.encode(p) for p in PROMPTS]
        outs = runner.generate_outputs(
            ids, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
        )
    assert [o.token_ids for o in outs] == [hf_greedy(hf, p, 24) for p in ids]


@pytest.mark.slow
def test_held_out_perplexity_matches_transformers_within_one_percent() -> None:
    """The model card's held-out perplexity (transformers, in the training script) reproduced by
    our engine over the same windows: the same non-overlapping windows of the held-out play."""
    stats = json.loads((MODEL / "training_stats.json").read_text())
    seq_len = stats["train_config"]["seq_len"]
    with ModelRunner(max_total_tokens=4 * seq_len) as runner:
        tok = runner.tokenizer
        stream = tok.encode((MODEL / "heldout.txt").read_text(), add_special_tokens=False)
        stream.append(stats["eos_token_id"])
        n_windows = len(stream) // seq_len
        logprobs: list[float] = []
        for w in range(n_windows):
            logprobs.extend(runner.score(stream[w * seq_len : (w + 1) * seq_len]))
    assert len(logprobs) == stats["heldout_scored_tokens"]
    ours = math.exp(-sum(logprobs) / len(logprobs))
    assert ours == pytest.approx(stats["heldout_perplexity"], rel=0.01)
    assert ours < stats["vocab_size"] / 10  # a trained model, far from uniform


def test_cli_default_model_prints_shakespeare_like_text(capsys: pytest.CaptureFixture[str]) -> None:
    from vibe_sgl_lite.cli import main

    assert main(["generate", "ROMEO:", "--max-tokens", "40", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:") and len(out) > 60


def test_chat_renders_the_documented_speaker_template() -> None:
    """The bundled tokenizer has a chat template (without one ``chat`` raised), and it renders
    exactly what the model card documents: speaker turns, ending on ``ASSISTANT:``."""
    messages = [{"role": "user", "content": "Good morrow."}]
    conversation = [
        {"role": "system", "content": "Speak in verse."},
        *messages,
        {"role": "assistant", "content": "Good morrow, sir."},
        {"role": "user", "content": "What news?"},
    ]
    with ModelRunner(max_total_tokens=256) as runner:
        reply = runner.chat(messages, max_tokens=5, temperature=0)
        assert isinstance(reply, str) and reply
        tok = runner.tokenizer
        rendered = tok.apply_chat_template(messages)
        assert rendered == "USER:\nGood morrow.\n\nASSISTANT:\n"  # the card's example
        assert tok.apply_chat_template(conversation) == (
            "SYSTEM:\nSpeak in verse.\n\nUSER:\nGood morrow.\n\n"
            "ASSISTANT:\nGood morrow, sir.\n\nUSER:\nWhat news?\n\nASSISTANT:\n"
        )
        # chat is generate on that rendering, nothing else
        ids = tok.encode(rendered, add_special_tokens=False)
        assert reply == runner.generate(ids, max_tokens=5, temperature=0)
    # the card shows the template as shipped
    template = json.loads((MODEL / "tokenizer_config.json").read_text())["chat_template"]
    assert f"```jinja\n{template}\n```" in (MODEL / "README.md").read_text()
