"""Qwen2, Llama and Qwen3-MoE against transformers' own implementations with the same weights.

Every case is a tiny random model that transformers writes with ``save_pretrained``; we check
prefill logits (fp32, 1e-4) and greedy tokens through ``ModelRunner`` with the prompts batched
together, plus what only one architecture has: llama3 rope scaling, the dense/sparse layer rule,
both expert checkpoint layouts, an expert-parallel slice, and the sliding-window refusal.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from tests.model_factory import (
    build_llama,
    build_qwen2,
    build_qwen3_moe,
    copy_with_json,
    hf_greedy,
    hf_prefill_logits,
    load_hf,
    prefill_logits,
)
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.models import MODEL_REGISTRY, ModelConfig, load_model
from vibe_sgl_lite.models.layers import GatedMLP, RotaryEmbedding
from vibe_sgl_lite.models.loader import iter_safetensors
from vibe_sgl_lite.models.moe import SparseMoeBlock
from vibe_sgl_lite.models.qwen3_moe import Qwen3MoeForCausalLM

LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=10000.0,
    factor=4.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    # Small enough that the tiny model's head_dim 16 has frequencies in all three llama3 bands
    # (kept, smoothly interpolated, divided by ``factor``).
    original_max_position_embeddings=64,
)

Builder = Callable[..., Path]
CASES: dict[str, tuple[Builder, dict[str, Any]]] = {
    "qwen2": (build_qwen2, {}),
    "llama-biases": (build_llama, dict(attention_bias=True, mlp_bias=True)),
    "llama3-tied": (build_llama, dict(tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE)),
    # layers 1 and 3 sparse; router weights renormalised over the top 2
    "moe-step2-norm": (build_qwen3_moe, dict(decoder_sparse_step=2, norm_topk_prob=True)),
    # layers 1, 2, 3 sparse, layer 0 dense; raw softmax weights
    "moe-mlponly0": (
        build_qwen3_moe,
        dict(decoder_sparse_step=1, mlp_only_layers=[0], norm_topk_prob=False),
    ),
}

PROMPTS = [
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog. Explain KV caches:",
    "def forward(self, x):",
    "Café 日本語 🙂",
    "a",
    "1 2 3 4 5 6 7 8 9 10",
]
LOGIT_PROMPTS = [[5, 17, 33, 99, 100, 3, 7, 8, 9, 10, 11], [42, 43], [7] * 9]
MAX_NEW = 10
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)


@pytest.fixture(scope="module", params=list(CASES))
def case_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path
) -> Path:
    builder, kwargs = CASES[request.param]
    return builder(tmp_path_factory.mktemp(request.param), tokenizer_dir, **kwargs)


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return build_qwen3_moe(tmp_path_factory.mktemp("moe"), tokenizer_dir, seed=1)


# --- every architecture: logits and greedy tokens -------------------------------------------


@pytest.mark.unit
def test_prefill_logits_match_transformers(case_dir: Path) -> None:
    ours = prefill_logits(case_dir, LOGIT_PROMPTS)
    ref = hf_prefill_logits(load_hf(case_dir), LOGIT_PROMPTS)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.integration
def test_batched_greedy_matches_transformers(case_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(case_dir))
    prompt_ids = [tok(p).input_ids for p in PROMPTS]
    hf = load_hf(case_dir)
    reference = [hf_greedy(hf, ids, MAX_NEW) for ids in prompt_ids]
    with ModelRunner(case_dir, page_size=4, max_total_tokens=1024) as runner:
        outputs = runner.generate_outputs(prompt_ids, GREEDY)
    for ids, out, ref in zip(prompt_ids, outputs, reference):
        assert out.token_ids == ref, _explain_mismatch(hf, ids, out.token_ids, ref)


def _explain_mismatch(hf: Any, prompt: list[int], ours: list[int], ref: list[int]) -> str:
    """Say at which step greedy diverged, and whether transformers itself saw a near-tie there."""
    step = next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), None)
    if step is None:
        return f"same prefix, but {len(ours)} tokens vs transformers' {len(ref)}"
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + ref[:step]])).logits[0, -1]
    gap = (logits[ref[step]] - logits[ours[step]]).abs().item()
    verdict = "a near-tie (< 1e-5), not a model bug" if gap < 1e-5 else "a real divergence"
    return f"step {step}: ours {ours[step]} vs transformers {ref[step]}, logit gap {gap:.2e}: {verdict}"


@pytest.mark.unit
def test_registry_names_every_architecture() -> None:
    for arch in ("Qwen2ForCausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"):
        assert MODEL_REGISTRY[arch].__name__ == arch


# --- Qwen2 -----------------------------------------------------------------------------------


@pytest.mark.unit
def test_qwen2_has_qkv_bias_and_no_o_bias_or_qk_norm(tmp_path: Path, tokenizer_dir: Path) -> None:
    model, _ = load_model(build_qwen2(tmp_path / "m", tokenizer_dir))
    attn = model.layers[0].self_attn
    assert attn.qkv_proj.bias is not None and attn.qkv_proj.bias.abs().sum() > 0
    assert attn.o_proj.bias is None and attn.q_norm is None


@pytest.mark.unit
def test_sliding_window_is_refused_by_field_name(tmp_path: Path, tokenizer_dir: Path) -> None:
    sliding = build_qwen2(
        tmp_path / "sliding", tokenizer_dir, use_sliding_window=True, sliding_window=4
    )
    assert json.loads((sliding / "config.json").read_text())["use_sliding_window"] is True
    with pytest.raises(ValueError, match="Qwen2ForCausalLM: use_sliding_window=true"):
        load_model(sliding)

    plain = build_qwen2(tmp_path / "plain", tokenizer_dir)
    layer_types = ["full_attention", "sliding_attention"]
    typed = copy_with_json(plain, tmp_path / "typed", "config.json", layer_types=layer_types)
    with pytest.raises(ValueError, match="layer_types contains 'sliding_attention'"):
        load_model(typed)

    # Switched off, the window size is ignored, as transformers ignores it.
    off = copy_with_json(
        plain, tmp_path / "off", "config.json", use_sliding_window=False, sliding_window=2
    )
    torch.testing.assert_close(
        prefill_logits(off, LOGIT_PROMPTS), prefill_logits(plain, LOGIT_PROMPTS)
    )


@pytest.mark.unit
def test_unsupported_activation_is_refused(tmp_path: Path, tokenizer_dir: Path) -> None:
    plain = build_llama(tmp_path / "m", tokenizer_dir)
    d = copy_with_json(plain, tmp_path / "gelu", "config.json", hidden_act="gelu")
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        load_model(d)


# --- Llama -----------------------------------------------------------------------------------


@pytest.mark.unit
def test_llama3_rope_scaling_is_read_and_applied(tmp_path: Path, tokenizer_dir: Path) -> None:
    d = build_llama(tmp_path / "m", tokenizer_dir, rope_parameters=LLAMA3_ROPE)
    cfg = ModelConfig.from_model_dir(d)
    assert cfg.rope_scaling is not None and cfg.rope_scaling["rope_type"] == "llama3"
    model, _ = load_model(d)
    plain = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, None)
    assert not torch.allclose(model.rotary.cos, plain.cos)  # the scaling changed something
    assert model.layers[0].self_attn.o_proj.bias is None  # attention_bias false by default


@pytest.mark.unit
def test_llama_tied_embeddings_share_one_tensor(tmp_path: Path, tokenizer_dir: Path) -> None:
    model, _ = load_model(build_llama(tmp_path / "m", tokenizer_dir, tie_word_embeddings=True))
    assert model.lm_head.weight is model.embed_tokens.weight


# --- Qwen3-MoE -------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("step", "mlp_only", "sparse"),
    [(2, [], [1, 3]), (1, [0], [1, 2, 3]), (1, [], [0, 1, 2, 3]), (3, [2], [])],
)
def test_sparse_layers_follow_transformers_rule(
    tmp_path: Path, tokenizer_dir: Path, step: int, mlp_only: list[int], sparse: list[int]
) -> None:
    d = build_qwen3_moe(
        tmp_path / "m", tokenizer_dir, decoder_sparse_step=step, mlp_only_layers=mlp_only
    )
    model, cfg = load_model(d)
    hf = load_hf(d)
    for i, layer in enumerate(model.layers):
        hf_sparse = type(hf.model.layers[i].mlp).__name__ == "Qwen3MoeSparseMoeBlock"
        assert isinstance(layer.mlp, SparseMoeBlock) == hf_sparse == (i in sparse), i
        if i in sparse:
            assert tuple(layer.mlp.w13.shape) == (8, 2 * 32, 64)
            assert tuple(layer.mlp.w2.shape) == (8, 64, 32)
        else:
            assert isinstance(layer.mlp, GatedMLP) and layer.mlp.intermediate_size == 128
    assert cfg.num_experts == 8 and cfg.num_experts_per_tok == 2


def _fused_copy(moe_dir: Path, dst: Path) -> Path:
    """The same model with transformers' in-memory layout: ``experts.gate_up_proj [E, 2I, H]``."""
    shutil.copytree(moe_dir, dst)
    state = {k: v.contiguous() for k, v in load_hf(moe_dir).state_dict().items()}
    assert "model.layers.1.mlp.experts.gate_up_proj" in state
    (dst / "model.safetensors").unlink()
    save_file(state, str(dst / "model.safetensors"))
    return dst


@pytest.mark.unit
def test_moe_checkpoint_is_per_expert_and_fused_layout_loads_the_same(
    tmp_path: Path, moe_dir: Path
) -> None:
    names = [n for n, _ in iter_safetensors(moe_dir)]
    assert "model.layers.1.mlp.experts.7.gate_proj.weight" in names  # the Hub layout
    fused = _fused_copy(moe_dir, tmp_path / "fused")
    a = load_model(moe_dir)[0].state_dict()
    b = load_model(fused)[0].state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


class _UpperHalfExperts(Qwen3MoeForCausalLM):
    """What an expert-parallel rank 1 of 2 builds: experts 4..7 only."""

    def build_mlp(self, config: ModelConfig, layer_idx: int) -> torch.nn.Module:
        if not config.is_sparse_layer(layer_idx):
            return super().build_mlp(config, layer_idx)
        return SparseMoeBlock(
            config.hidden_size,
            config.moe_intermediate_size,
            config.num_experts,
            config.num_experts_per_tok,
            config.norm_topk_prob,
            expert_start=4,
            num_local_experts=4,
        )


@pytest.mark.unit
@pytest.mark.parametrize("layout", ["per-expert", "fused"])
def test_expert_slice_loads_only_its_experts(tmp_path: Path, moe_dir: Path, layout: str) -> None:
    src = moe_dir if layout == "per-expert" else _fused_copy(moe_dir, tmp_path / "fused")
    full, cfg = load_model(src)
    half = _UpperHalfExperts(cfg)
    half.load_weights(iter_safetensors(src))
    block, ref = half.layers[1].mlp, full.layers[1].mlp
    assert isinstance(block, SparseMoeBlock) and isinstance(ref, SparseMoeBlock)
    assert torch.equal(block.w13, ref.w13[4:]) and torch.equal(block.w2, ref.w2[4:])
    assert torch.equal(block.gate.weight, ref.gate.weight)


def _random_block(num_experts: int = 8, top_k: int = 2, norm: bool = True) -> SparseMoeBlock:
    torch.manual_seed(0)
    block = SparseMoeBlock(16, 8, num_experts, top_k, norm)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.5)
    return block


@pytest.mark.unit
def test_local_expert_slices_sum_to_the_whole_block() -> None:
    """Two ranks with experts 0..2 and 3..7 add up to one rank with all eight."""
    full = _random_block()
    x = torch.randn(23, 16)
    ids, weights = full.route(x)
    parts = []
    for start, n in [(0, 3), (3, 5)]:
        part = SparseMoeBlock(16, 8, 8, 2, True, expert_start=start, num_local_experts=n)
        with torch.no_grad():
            part.gate.weight.copy_(full.gate.weight)
            part.w13.copy_(full.w13[start : start + n])
            part.w2.copy_(full.w2[start : start + n])
        parts.append(part.forward_local(x, ids, weights))
    torch.testing.assert_close(parts[0] + parts[1], full(x), atol=1e-6, rtol=1e-6)


@pytest.mark.unit
@settings(max_examples=30, deadline=None)
@given(
    num_experts=st.integers(1, 8),
    data=st.data(),
    num_tokens=st.integers(0, 12),
)
def test_any_expert_partition_sums_to_the_whole_block(
    num_experts: int, data: st.DataObject, num_tokens: int
) -> None:
    """Whatever the expert count, top-k and cut points, the local slices add up exactly."""
    top_k = data.draw(st.integers(1, num_experts))
    cuts = sorted(data.draw(st.lists(st.integers(0, num_experts), max_size=3)))
    bounds = [0, *cuts, num_experts]
    full = _random_block(num_experts, top_k)
    x = torch.randn(num_tokens, 16)
    ids, weights = full.route(x)
    total = torch.zeros_like(x)
    for start, end in zip(bounds, bounds[1:]):
        part = SparseMoeBlock(
            16, 8, num_experts, top_k, True, expert_start=start, num_local_experts=end - start
        )
        with torch.no_grad():
            part.w13.copy_(full.w13[start:end])
            part.w2.copy_(full.w2[start:end])
        total += part.forward_local(x, ids, weights)
    torch.testing.assert_close(total, full(x), atol=1e-5, rtol=1e-5)


@pytest.mark.unit
def test_missing_expert_tensor_is_named(tmp_path: Path, moe_dir: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(moe_dir, d)
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["model.layers.3.mlp.experts.5.up_proj.weight"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="missing tensors for: layers.3.mlp.w13"):
        load_model(d)


@pytest.mark.unit
@pytest.mark.parametrize("norm", [True, False])
def test_moe_block_matches_a_per_token_reference(norm: bool) -> None:
    block = _random_block(norm=norm)
    x = torch.randn(17, 16)
    probs = torch.softmax(x @ block.gate.weight.T, dim=-1)
    expected = torch.zeros_like(x)
    for t in range(x.shape[0]):
        w, ids = probs[t].topk(2)
        w = w / w.sum() if norm else w
        for weight, e in zip(w.tolist(), ids.tolist()):
            gate, up = (block.w13[e] @ x[t]).chunk(2)
            expected[t] += weight * (block.w2[e] @ (torch.nn.functional.silu(gate) * up))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    assert block(x[:0]).shape == (0, 16)  # an empty batch is not an error


@pytest.mark.unit
def test_moe_block_rejects_bad_expert_slices() -> None:
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        SparseMoeBlock(16, 8, 4, 5, True)
    with pytest.raises(ValueError, match="local experts 2..5"):
        SparseMoeBlock(16, 8, 4, 2, True, expert_start=2, num_local_experts=4)
