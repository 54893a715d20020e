"""Speculation from every surface: the CLI's flags, the server (OpenAI client, vLLM metric
names) and the refusals, each naming the setting, before any model or worker is loaded."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from tests.server.conftest import MODEL, serve
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.cli import main
from vibe_sgl_lite.config import EngineConfig

PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown fox"


def test_cli_generate_with_speculation(qwen3_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", "--model", str(qwen3_dir), PROMPT, "--max-tokens", "20", "--temperature"]
    flags = ["0", "--speculative-algorithm", "ngram", "--speculative-num-draft-tokens", "3"]
    assert main(args + flags + ["--stats"]) == 0
    out = capsys.readouterr().out
    with ModelRunner(qwen3_dir) as runner:
        expected = runner.generate(PROMPT, max_tokens=20, temperature=0)
    assert out.startswith(PROMPT + expected + "\n")
    assert '"spec_num_draft_tokens"' in out


def test_per_request_metrics_count_drafts(qwen3_dir: Path) -> None:
    with ModelRunner(
        qwen3_dir, speculative_adaptive=False, speculative_algorithm="ngram"
    ) as runner:
        out = runner.generate_outputs([PROMPT], SamplingParams(temperature=0, max_tokens=30))[0]
        stats = runner.get_stats()
    assert out.metrics["spec_draft_tokens"] == stats["spec_num_draft_tokens"] > 0
    assert out.metrics["spec_accepted_tokens"] == stats["spec_num_accepted_tokens"]


def test_server_speculates_and_reports_vllm_counters(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir) as plain:
        expected = plain.generate(PROMPT, max_tokens=24, temperature=0)
    with (
        ModelRunner(qwen3_dir, speculative_adaptive=False, speculative_algorithm="ngram") as runner,
        serve(runner) as live,
    ):
        reply = live.client().completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0
        )
        assert reply.choices[0].text == expected
        stats = live.idle_stats()
        assert stats["spec_num_draft_tokens"] > 0
        conn = http.client.HTTPConnection(live.host, live.port, timeout=60)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    label = f'{{model_name="{MODEL}"}}'
    drafts = (
        f"vllm:spec_decode_num_draft_tokens_total{label} {float(stats['spec_num_draft_tokens'])}"
    )
    assert drafts in text
    assert f"vllm:spec_decode_num_accepted_tokens_total{label}" in text
    assert f"vllm:spec_decode_num_drafts_total{label}" in text


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        (dict(speculative_algorithm="medusa"), "speculative_algorithm"),
        (
            dict(speculative_algorithm="ngram", speculative_num_draft_tokens=0),
            "speculative_num_draft_tokens",
        ),
        (
            dict(speculative_algorithm="ngram", speculative_num_draft_tokens=17),
            "speculative_num_draft_tokens",
        ),
        (dict(speculative_algorithm="draft"), "speculative_draft_model_path"),
        (dict(speculative_algorithm="eagle", tp_size=2), "tp_size"),
        (dict(speculative_algorithm="ngram", attention_method="streaming"), "attention_method"),
        (dict(speculative_ngram_min=3, speculative_ngram_max=2), "speculative_ngram_max"),
    ],
)
def test_bad_settings_are_refused_by_name(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        EngineConfig(**settings)  # type: ignore[arg-type]


def test_draft_model_with_another_vocabulary_is_refused(
    qwen3_dir: Path, tmp_path: Path, tokenizer_dir: Path
) -> None:
    from tests.model_factory import build_qwen3, build_tokenizer

    other = build_qwen3(tmp_path / "other", build_tokenizer(tmp_path / "tok", vocab_size=320))
    with pytest.raises(ValueError, match="speculative_draft_model_path"):
        ModelRunner(
            qwen3_dir, speculative_algorithm="draft", speculative_draft_model_path=str(other)
        )


def test_eagle_head_of_another_size_is_refused(
    qwen3_dir: Path, tmp_path: Path, tokenizer_dir: Path
) -> None:
    from tests.model_factory import build_qwen3
    from tests.speculative.random_head import build_random_head

    wider = build_qwen3(tmp_path / "wider", tokenizer_dir, hidden_size=96)
    head = build_random_head(wider, tmp_path / "head")
    with pytest.raises(ValueError, match="speculative_draft_model_path"):
        ModelRunner(
            qwen3_dir, speculative_algorithm="eagle", speculative_draft_model_path=str(head)
        )
    with pytest.raises(ValueError, match="speculative_draft_model_path"):
        ModelRunner(qwen3_dir, speculative_algorithm="eagle")  # no head ships for this model
