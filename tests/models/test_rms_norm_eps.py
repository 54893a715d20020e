"""``rms_norm_eps`` from the config reaches every RMSNorm (layer norms, final norm, Qwen3's q/k-norm).

Every other test model uses ``rms_norm_eps=1e-6``, the RMSNorm default: an engine that ignored
the config's value would pass all of them. Here the eps is large (0.5) against the tiny models'
hidden states (mean square about 0.04 after the embedding), so the normalisation depends on it
strongly: each test also checks that eps=1e-6 would have given logits far outside the tolerance,
so the parity it asserts cannot hold by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.model_factory import (
    build_llama,
    build_qwen3,
    hf_greedy,
    hf_prefill_logits,
    load_hf,
    prefill_logits,
    read_config,
)
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.models import ModelConfig

LARGE_EPS = 0.5
DEFAULT_EPS = 1e-6
ATOL = RTOL = 1e-4  # fp32 parity, as in test_more_models.py
LOGIT_PROMPTS = [[5, 17, 33, 99, 100, 3, 7, 8, 9, 10, 11], [42, 43], [7] * 9]
PROMPTS = ["Once upon a time", "def forward(self, x):", "1 2 3 4 5 6 7 8 9 10"]
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)

BUILDERS: dict[str, Callable[..., Path]] = {"qwen3": build_qwen3, "llama": build_llama}


@pytest.fixture(scope="module", params=list(BUILDERS))
def large_eps_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path
) -> Path:
    out = tmp_path_factory.mktemp(f"{request.param}-eps")
    model_dir = BUILDERS[request.param](out, tokenizer_dir, rms_norm_eps=LARGE_EPS)
    assert read_config(model_dir)["rms_norm_eps"] == LARGE_EPS  # the premise of every test here
    return model_dir


def _hf_with_eps(model_dir: Path, eps: float) -> Any:
    """transformers' model with the same weights and ``rms_norm_eps`` overridden."""
    return AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, rms_norm_eps=eps
    ).eval()


@pytest.mark.unit
def test_config_reads_the_eps(large_eps_dir: Path) -> None:
    assert ModelConfig.from_model_dir(large_eps_dir).rms_norm_eps == LARGE_EPS


@pytest.mark.unit
def test_prefill_logits_match_transformers_with_a_large_eps(large_eps_dir: Path) -> None:
    ref = hf_prefill_logits(load_hf(large_eps_dir), LOGIT_PROMPTS)
    torch.testing.assert_close(
        prefill_logits(large_eps_dir, LOGIT_PROMPTS), ref, atol=ATOL, rtol=RTOL
    )

    # The eps matters: an engine that used the default would be far outside the tolerance.
    with_default_eps = hf_prefill_logits(_hf_with_eps(large_eps_dir, DEFAULT_EPS), LOGIT_PROMPTS)
    assert (with_default_eps - ref).abs().max().item() > 100 * ATOL


@pytest.mark.integration
def test_greedy_matches_transformers_with_a_large_eps(large_eps_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(large_eps_dir))
    prompt_ids = [tok(p).input_ids for p in PROMPTS]
    reference = [hf_greedy(load_hf(large_eps_dir), ids, GREEDY.max_tokens) for ids in prompt_ids]
    with ModelRunner(large_eps_dir, page_size=4, max_total_tokens=512) as runner:
        outputs = runner.generate_outputs(prompt_ids, GREEDY)
    assert [o.token_ids for o in outputs] == reference

    # ... and with the default eps the tokens would differ, so this comparison can fail.
    default_hf = _hf_with_eps(large_eps_dir, DEFAULT_EPS)
    with_default_eps = [hf_greedy(default_hf, ids, GREEDY.max_tokens) for ids in prompt_ids]
    assert with_default_eps != reference
