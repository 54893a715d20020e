"""``SamplingParams(prompt_logprobs=k)``: every prompt token scored as transformers scores it,
including the tokens a second request gets from the prefix cache (``core/scoring.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from tests.model_factory import load_hf
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.sampling import TokenLogprobs

pytestmark = pytest.mark.integration

PROMPT = "ROMEO: But soft, what light through yonder window breaks? JULIET: O Romeo, Romeo."
TOP = 3


def _check(got: list[TokenLogprobs | None], ids: list[int], ref: torch.Tensor) -> None:
    assert len(got) == len(ids) and got[0] is None
    for pos, entry in enumerate(got[1:], start=1):
        assert entry is not None and entry.token_id == ids[pos]
        assert entry.logprob == pytest.approx(float(ref[pos - 1, ids[pos]]), abs=1e-4)
        values, top_ids = ref[pos - 1].topk(TOP)
        assert [t for t, _ in entry.top] == top_ids.tolist()
        torch.testing.assert_close(
            torch.tensor([v for _, v in entry.top]), values, atol=1e-4, rtol=0
        )


def test_prompt_logprobs_match_transformers_with_and_without_the_prefix_cache(
    qwen3_dir: Path,
) -> None:
    ids = AutoTokenizer.from_pretrained(str(qwen3_dir))(PROMPT).input_ids
    with torch.no_grad():
        ref = torch.log_softmax(load_hf(qwen3_dir)(torch.tensor([ids])).logits[0].float(), -1)
    params = SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=TOP, logprobs=1)
    with ModelRunner(qwen3_dir, page_size=4, max_total_tokens=256) as runner:
        first = runner.generate_outputs([ids], params)[0]
        second = runner.generate_outputs([ids], params)[0]  # its prefix comes from the cache
        plain = runner.generate_outputs([ids], SamplingParams(temperature=0, max_tokens=3))[0]
        stats = runner.get_stats()
    assert second.num_cached_tokens > 0
    for out in (first, second):
        assert out.prompt_logprobs is not None
        _check(out.prompt_logprobs, ids, ref)
        assert out.token_ids == plain.token_ids  # scoring changes nothing about generation
        assert out.logprobs is not None and len(out.logprobs) == 3
    assert plain.prompt_logprobs is None
    assert stats["kv_pages_free"] + stats["num_evictable_pages"] == stats["kv_pages_total"]


def test_prompt_logprobs_zero_gives_no_alternatives(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir, max_total_tokens=256) as runner:
        out = runner.generate_outputs(["a b c"], SamplingParams(max_tokens=1, prompt_logprobs=0))
    assert out[0].prompt_logprobs is not None
    assert out[0].prompt_logprobs[0] is None
    assert all(lp is not None and lp.top == [] for lp in out[0].prompt_logprobs[1:])
