"""Our Qwen3 against transformers' Qwen3 with the same weights: logits, shapes, loader errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.model_factory import build_qwen3, load_hf, prefill_logits
from vibe_sgl_lite.models import load_model

pytestmark = pytest.mark.unit

SHAPES = {
    "mha": dict(num_attention_heads=4, num_key_value_heads=4, head_dim=16),
    "gqa2": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "gqa4-tied": dict(
        num_attention_heads=8, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True
    ),
    "headdim24": dict(num_attention_heads=2, num_key_value_heads=1, head_dim=24),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_prefill_logits_match_transformers(tmp_path: Path, tokenizer_dir: Path, shape: str) -> None:
    model_dir = build_qwen3(tmp_path / shape, tokenizer_dir, **SHAPES[shape])
    hf = load_hf(model_dir)
    prompts = [[5, 17, 33, 99, 100, 3, 7, 8, 9, 10, 11], [42, 43], [7] * 9]
    ours = prefill_logits(model_dir, prompts)
    start = 0
    for ids in prompts:
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0]
        torch.testing.assert_close(ours[start : start + len(ids)], ref, atol=1e-4, rtol=1e-4)
        start += len(ids)


def test_sharded_checkpoint_loads_identically(tmp_path: Path, tokenizer_dir: Path) -> None:
    single = build_qwen3(tmp_path / "single", tokenizer_dir, seed=3)
    sharded = build_qwen3(tmp_path / "sharded", tokenizer_dir, seed=3, max_shard_size="50KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    a = dict(load_model(single)[0].state_dict())
    b = dict(load_model(sharded)[0].state_dict())
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(qwen3_dir: Path, dtype: torch.dtype) -> None:
    """Half-precision weights and KV: logits near fp32 transformers (loose, stated tolerance)."""
    model, _ = load_model(qwen3_dir, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    hf = load_hf(qwen3_dir)
    ids = [5, 17, 33, 99, 100, 3]
    ours = prefill_logits(qwen3_dir, [ids], dtype=dtype)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    assert ours.dtype == torch.float32
    assert (ours - ref).abs().max() < 0.1 * ref.abs().max()
    assert not torch.equal(ours, ref)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_missing_weights_file_is_a_clear_error(tmp_path: Path, qwen3_dir: Path) -> None:
    d = _copy(qwen3_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model(d)


def test_unknown_architecture_lists_supported(tmp_path: Path, qwen3_dir: Path) -> None:
    d = _copy(qwen3_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*supported: .*Qwen3ForCausalLM"):
        load_model(d)


def test_unsupported_rope_scaling_is_rejected(tmp_path: Path, qwen3_dir: Path) -> None:
    d = _copy(qwen3_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = 10000.0
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope_scaling type 'yarn'"):
        load_model(d)


def test_missing_tensor_is_named(tmp_path: Path, qwen3_dir: Path) -> None:
    d = _copy(qwen3_dir, tmp_path / "m")
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="layers.1.mlp.down_proj.weight"):
        load_model(d)


def test_misshaped_tensor_is_named(tmp_path: Path, qwen3_dir: Path) -> None:
    d = _copy(qwen3_dir, tmp_path / "m")
    tensors = load_file(str(d / "model.safetensors"))
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="model.layers.0.self_attn.k_proj.weight.*shape"):
        load_model(d)


def test_bad_dtype_is_rejected(qwen3_dir: Path) -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model(qwen3_dir, dtype="int8")
