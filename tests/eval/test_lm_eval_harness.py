"""lm-evaluation-harness against the live server: its ``local-completions`` model must score
and generate exactly as its own transformers backend (``hf``) does on the same weights.

The oracle of issue 23. The harness scores a multiple-choice question by asking the server for
the log-probabilities of each choice's tokens after the context (``echo: true, logprobs: 1,
max_tokens: 1``, the prompt as token ids) and tokenizes through the server's ``/tokenize``,
``/detokenize`` and ``/tokenizer_info`` (it picks that "remote" tokenizer itself when those
answer). Two small tasks under ``tests/eval/`` (JSONL data and the harness's task YAML) run
through both backends on the bundled tiny-shakespeare model, a real trained one, so the choices
have meaningfully different scores; the per-request results must agree, not only the metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import LiveServer, serve
from vibe_sgl_lite import ModelRunner

lm_eval = pytest.importorskip("lm_eval", reason="needs the eval extra: pip install -e '.[eval]'")

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "vibe_sgl_lite" / "assets" / "tiny-shakespeare"
TASKS = ["vibe_shakespeare_mc", "vibe_shakespeare_gen"]
LOGLIKELIHOOD_TOLERANCE = 1e-3  # the bound; both sides compute in float32


@pytest.fixture(scope="module")
def shakespeare_server() -> Iterator[LiveServer]:
    with ModelRunner(MODEL_DIR, max_total_tokens=4096) as runner, serve(runner) as live:
        yield live


def _evaluate(model: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[dict[str, Any]]]:
    """Run both tasks on ``model``; the logged samples (every request's result) by task."""
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(ROOT)  # the YAMLs name their data files relative to the repository
    results = lm_eval.simple_evaluate(
        model=model,
        tasks=TASKS,
        task_manager=TaskManager(include_path=str(ROOT / "tests" / "eval")),
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    assert results is not None
    samples: dict[str, list[dict[str, Any]]] = results["samples"]
    return {task: sorted(samples[task], key=lambda s: s["doc_id"]) for task in TASKS}


def test_server_matches_the_harness_transformers_backend(
    shakespeare_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    remote = LocalCompletionsAPI(
        base_url=shakespeare_server.base_url + "/v1/completions",
        model="tiny",
        max_retries=1,
    )
    assert remote.tokenizer_backend == "remote"  # found /tokenizer_info and /tokenize
    ours = _evaluate(remote, monkeypatch)
    hf = HFLM(pretrained=str(MODEL_DIR), dtype="float32", device="cpu", batch_size=1)
    theirs = _evaluate(hf, monkeypatch)

    worst = 0.0
    for a, b in zip(ours["vibe_shakespeare_mc"], theirs["vibe_shakespeare_mc"], strict=True):
        assert a["arguments"] == b["arguments"]
        for (ll_a, greedy_a), (ll_b, greedy_b) in zip(
            a["filtered_resps"], b["filtered_resps"], strict=True
        ):
            worst = max(worst, abs(ll_a - ll_b))
            assert ll_a == pytest.approx(ll_b, abs=LOGLIKELIHOOD_TOLERANCE)
            assert ll_a < 0  # scored, not the 0 a server without prompt logprobs gives
            assert greedy_a == greedy_b
        assert a["acc"] == b["acc"]
    accuracy = sum(s["acc"] for s in ours["vibe_shakespeare_mc"]) / len(ours["vibe_shakespeare_mc"])
    print(f"max |loglikelihood difference| = {worst:.2e}, accuracy {accuracy:.2f} on both")

    generated = [s["filtered_resps"][0] for s in ours["vibe_shakespeare_gen"]]
    assert generated == [s["filtered_resps"][0] for s in theirs["vibe_shakespeare_gen"]]
    assert all(generated)  # the model wrote something for every prompt
