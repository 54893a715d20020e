"""LoRA serving against transformers + peft on the same base and adapters (fp32).

Logits within 1e-4 of ``PeftModel`` and greedy output token for token, for each adapter alone
and for a mixed batch of every adapter plus the base in random order (one forward, one engine
step per token). The adapters come from peft's own ``get_peft_model`` (``conftest.py``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.lora.conftest import greedy, lora_runner, peft_greedy, peft_logits
from tests.model_factory import load_hf
from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.models.worker import ModelWorker

pytestmark = pytest.mark.integration

PROMPTS = [
    [5, 17, 42, 99, 7, 3],
    [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21],
    [250, 3, 77],
    [8] * 9,
]
MAX_TOKENS = 8
ATOL = 1e-4


@pytest.fixture(scope="module")
def runner(qwen3_dir: Path, adapters: dict[str, Path]) -> Iterator[ModelRunner]:
    with lora_runner(qwen3_dir, adapters) as r:
        yield r


def mixed_batch(seed: int) -> tuple[list[str | None], list[list[int]]]:
    """Every adapter and the base twice, in a random order, each with one of ``PROMPTS``."""
    names: list[str | None] = [None, "qv", "all_rslora", "mlp_o_k"] * 2
    random.Random(seed).shuffle(names)
    return names, [PROMPTS[i % len(PROMPTS)] for i in range(len(names))]


def forward_rows(
    runner: ModelRunner, prompts: list[list[int]], names: list[str | None]
) -> list[torch.Tensor]:
    """One forward of ``prompts`` as rows of one batch, each under its adapter; per-row logits."""
    engine = runner.engine
    assert engine is not None and isinstance(engine.executor, ModelWorker)
    rows, held = [], []
    for ids, name in zip(prompts, names):
        pages = engine.allocator.alloc(-(-len(ids) // engine.config.page_size))
        held.extend(pages)
        rows.append(
            BatchRow(ids, 0, pages, False, all_logits=True, lora=engine.loras.resolve(name))
        )
    try:
        logits = engine.executor.forward(rows)
    finally:
        engine.allocator.free(held)
    return list(logits.split([len(p) for p in prompts]))


def test_every_adapter_changes_the_output(peft_model: Any, adapters: dict[str, Path]) -> None:
    base = peft_logits(peft_model, None, PROMPTS[0])
    for name in adapters:
        assert (peft_logits(peft_model, name, PROMPTS[0]) - base).abs().max() > 0.1, name


@pytest.mark.parametrize("name", [None, "qv", "all_rslora", "mlp_o_k"])
def test_logits_alone_match_peft(runner: ModelRunner, peft_model: Any, name: str | None) -> None:
    for ids in PROMPTS:
        (ours,) = forward_rows(runner, [ids], [name])
        torch.testing.assert_close(ours, peft_logits(peft_model, name, ids), atol=ATOL, rtol=0)


def test_mixed_batch_logits_match_peft(runner: ModelRunner, peft_model: Any) -> None:
    names, prompts = mixed_batch(seed=0)
    for ids, name, ours in zip(prompts, names, forward_rows(runner, prompts, names)):
        torch.testing.assert_close(ours, peft_logits(peft_model, name, ids), atol=ATOL, rtol=0)


def test_mixed_batch_greedy_matches_peft(runner: ModelRunner, peft_model: Any) -> None:
    names, prompts = mixed_batch(seed=1)
    steps_before = runner.get_stats()["num_steps"]
    outputs = runner.generate_outputs(prompts, [greedy(n, MAX_TOKENS) for n in names])
    for ids, name, out in zip(prompts, names, outputs):
        assert out.token_ids == peft_greedy(peft_model, name, ids, MAX_TOKENS), name
    # one batch for all of them, not a loop per adapter: a step per token (one more when two
    # requests share prompt and adapter: the second waits a step to reuse the first's pages)
    assert runner.get_stats()["num_steps"] - steps_before <= MAX_TOKENS + 1


def test_scaling_is_applied_once(
    runner: ModelRunner, adapters: dict[str, Path], qwen3_dir: Path
) -> None:
    """The rsLoRA adapter merged into the base weights by hand, ``W + alpha / sqrt(r) * B A``,
    gives our logits: the scale is neither dropped, nor squared, nor the plain ``alpha / r``."""
    import json

    from safetensors.torch import load_file

    folder = adapters["all_rslora"]
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["use_rslora"] and cfg["r"] == 8
    scaling = cfg["lora_alpha"] / cfg["r"] ** 0.5
    merged = load_hf(qwen3_dir)
    params = dict(merged.named_parameters())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    with torch.no_grad():
        for key, a in tensors.items():
            if ".lora_A." in key:
                b = tensors[key.replace(".lora_A.", ".lora_B.")]
                module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
                params[module + ".weight"] += scaling * b @ a
        reference = merged(torch.tensor([PROMPTS[1]])).logits[0]
    (ours,) = forward_rows(runner, [PROMPTS[1]], ["all_rslora"])
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)
