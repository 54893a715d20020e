"""Column-major linear weights (``models/weight_layout.py``): same products, same greedy tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer

from tests.model_factory import build_qwen3, hf_greedy, load_hf
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.models.quantization import QuantizedLinear
from vibe_sgl_lite.models.weight_layout import relayout_linear_weights, resolve_weight_layout

PROMPTS = ["Once upon a time", "def forward(self, x):", "a", "1 2 3 4 5 6 7 8 9 10 11 12 13"]


def _is_column_major(weight: torch.Tensor) -> bool:
    return weight.t().is_contiguous() and not weight.is_contiguous()


@pytest.mark.unit
def test_relayout_keeps_values_and_shape_and_shares_a_tied_weight_once() -> None:
    torch.manual_seed(0)
    embed = nn.Embedding(50, 8)
    model = nn.ModuleDict(
        {"embed": embed, "proj": nn.Linear(8, 12, bias=True), "head": nn.Linear(8, 50, bias=False)}
    )
    model["head"].weight = embed.weight  # tied, as an LM head
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x = torch.randn(5, 8)
    with torch.no_grad():
        y_before = model["proj"](x)
        assert relayout_linear_weights(model, "column") == 2  # proj, head (= embed) once
        assert relayout_linear_weights(model, "column") == 2  # idempotent
        for name, p in model.named_parameters():
            assert p.shape == before[name].shape and torch.equal(p, before[name])
        assert _is_column_major(model["proj"].weight) and _is_column_major(embed.weight)
        assert model["head"].weight is embed.weight
        torch.testing.assert_close(model["proj"](x), y_before, rtol=1e-5, atol=1e-6)
        assert torch.equal(embed(torch.tensor([3, 7])), before["embed.weight"][[3, 7]])
        relayout_linear_weights(model, "row")
        assert model["proj"].weight.is_contiguous() and embed.weight.is_contiguous()


@pytest.mark.unit
def test_quantized_layers_keep_their_packed_weights() -> None:
    model = nn.Sequential(QuantizedLinear.from_linear(nn.Linear(64, 32), "int8"), nn.Linear(32, 8))
    assert relayout_linear_weights(model, "column") == 1


@pytest.mark.unit
def test_auto_picks_columns_for_float32_on_cpu_only() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_weight_layout("auto", cpu, torch.float32) == "column"
    assert resolve_weight_layout("auto", cpu, torch.bfloat16) == "row"
    assert resolve_weight_layout("auto", cuda, torch.float32) == "row"
    assert resolve_weight_layout("row", cpu, torch.float32) == "row"
    with pytest.raises(ValueError, match="weight_layout must be one of auto, row, column"):
        resolve_weight_layout("diagonal", cpu, torch.float32)
    with pytest.raises(ValueError, match="weight_layout must be one of auto, row, column"):
        EngineConfig(weight_layout="diagonal")


@pytest.mark.integration
@pytest.mark.parametrize("layout", ["row", "column"])
def test_both_layouts_give_transformers_greedy_tokens(
    tmp_path: Path, tokenizer_dir: Path, layout: str
) -> None:
    """Tied embeddings, so the column-major LM head is also the embedding table; batched
    decode runs 1-4 rows, where MKL's small-batch kernels differ between the layouts."""
    model_dir = build_qwen3(tmp_path / "tied", tokenizer_dir, tie_word_embeddings=True)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prompt_ids = [tok(p).input_ids for p in PROMPTS]
    hf = load_hf(model_dir)
    reference = [hf_greedy(hf, ids, 12) for ids in prompt_ids]
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    with ModelRunner(model_dir, page_size=4, max_total_tokens=512, weight_layout=layout) as runner:
        assert runner.engine is not None
        model = runner.engine.executor.model
        lm_head = model.get_submodule("lm_head").weight
        assert lm_head is model.get_submodule("embed_tokens").weight
        assert _is_column_major(lm_head) == (layout == "column")
        outputs = runner.generate_outputs(prompt_ids, greedy)
    assert [o.token_ids for o in outputs] == reference
