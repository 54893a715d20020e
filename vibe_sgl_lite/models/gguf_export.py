"""Write a Hugging Face folder (weights and byte-level BPE tokenizer) as a llama.cpp ``.gguf`` file.

The reverse of ``models/gguf.py``, for the supported architectures, in the layout llama.cpp's
own ``convert_hf_to_gguf.py`` writes: tensor names from ``gguf``'s name map, Llama's q/k rows
permuted the way llama.cpp's rotary expects, per-expert matrices stacked, no ``output.weight``
for a tied head, norms in float32 whatever ``storage`` the matrices get, and the tokenizer as a
"gpt2" (byte-level BPE) vocabulary padded with ``[PADn]`` tokens up to the embedding's rows.

Why it is here: ``vibe-sgl-lite bench`` runs llama.cpp on the *same* weights as transformers and
this engine, and the benchmark's models are random-weight folders that no GGUF exists for; the
GGUF tests use it to build tiny files of every architecture. It needs the ``gguf`` package
(the ``gguf`` extra), imported on call.

    export_gguf(Path("my-model"), Path("my-model.f32.gguf"))            # float32 matrices
    export_gguf(Path("my-model"), Path("my-model.q8_0.gguf"), "Q8_0")   # llama.cpp's 8-bit blocks
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from vibe_sgl_lite.models.config import ModelConfig

GGUF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3moe",
}
_PER_EXPERT = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+)\.weight")


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py), as it writes q/k rows: each
    head's rotary halves interleaved (``models/gguf.py`` undoes it when reading)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def export_gguf(
    hf_dir: Path, out: Path, storage: str = "F32", extra_tensors: tuple[str, ...] = ()
) -> Path:
    """Write ``hf_dir`` (a ``model.safetensors`` folder) to ``out``; returns ``out``.

    ``storage`` is the ggml type of the 2-D (and stacked expert) weights: ``F32``, ``F16``,
    ``BF16`` or a block type ``gguf.quantize`` implements (``Q8_0``, ``Q4_0``, ...). 1-D tensors
    stay float32. ``extra_tensors`` adds float32 ones of ``head_dim / 2`` values (tests: a
    ``rope_freqs`` the reader must ignore).
    """
    import gguf

    cfg = ModelConfig.from_model_dir(hf_dir)
    if cfg.architecture not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"export_gguf supports {', '.join(GGUF_ARCHITECTURES)}, got {cfg.architecture!r}"
        )
    arch = GGUF_ARCHITECTURES[cfg.architecture]
    names = gguf.get_tensor_name_map(
        next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), cfg.num_hidden_layers
    )
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_vocab_size(cfg.vocab_size)
    _add_tokenizer(writer, hf_dir, cfg.vocab_size)
    if cfg.num_experts:
        writer.add_expert_count(cfg.num_experts)
        writer.add_expert_used_count(cfg.num_experts_per_tok)
        writer.add_expert_feed_forward_length(cfg.moe_intermediate_size)

    tensors: dict[str, np.ndarray] = {}
    experts: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for hf_name, t in load_file(str(hf_dir / "model.safetensors")).items():
        if cfg.tie_word_embeddings and hf_name == "lm_head.weight":
            continue  # llama.cpp writes no output.weight for a tied head
        w = t.float().numpy()
        if m := _PER_EXPERT.fullmatch(hf_name):
            experts.setdefault((m[1], m[3]), {})[int(m[2])] = w
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        if arch == "llama" and stem.endswith(("q_proj", "k_proj")):
            heads = cfg.num_attention_heads if stem.endswith("q_proj") else cfg.num_key_value_heads
            w = llama_cpp_permute(w, heads)
        tensors[f"{names.get_name(stem)}.{suffix}"] = w
    for (stem, proj), per_expert in experts.items():
        stacked = np.stack([per_expert[e] for e in sorted(per_expert)])
        tensors[f"{names.get_name(f'{stem}.{proj}')}.weight"] = stacked
    for name in extra_tensors:
        tensors[name] = np.ones(cfg.head_dim // 2, dtype=np.float32)

    for name, w in tensors.items():
        if w.ndim == 1 or storage == "F32":
            writer.add_tensor(name, w)
        elif storage == "F16":
            writer.add_tensor(name, w.astype(np.float16))
        elif storage == "BF16":  # numpy has no bfloat16: hand over the bytes
            raw = torch.from_numpy(w).to(torch.bfloat16).view(torch.uint8).numpy()
            writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:  # blocks, given as bytes too
            qtype = gguf.GGMLQuantizationType[storage]
            writer.add_tensor(name, gguf.quantize(w, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_tokenizer(writer: Any, hf_dir: Path, vocab_size: int) -> None:
    """The folder's byte-level BPE as llama.cpp stores a "gpt2" tokenizer, one token per row of
    the embedding (``[PADn]`` past the tokenizer's own; a tokenizer larger than the embedding, as
    in small random test models, is cut to it, with the merges that make cut tokens), special
    added tokens are CONTROL, the eos and (when present) ``<|im_end|>`` as end of turn."""
    import gguf

    spec = json.loads((hf_dir / "tokenizer.json").read_text())
    if spec["model"]["type"] != "BPE":
        raise ValueError(f"export_gguf writes BPE tokenizers, got {spec['model']['type']!r}")
    by_id: dict[int, str] = {i: t for t, i in spec["model"]["vocab"].items()}
    special = set()
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        if added.get("special"):
            special.add(added["content"])
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    kept = set(tokens)
    kinds = gguf.TokenType
    types = [
        kinds.CONTROL if t in special else kinds.NORMAL if i in by_id else kinds.UNUSED
        for i, t in enumerate(tokens)
    ]
    merges = [m.split(" ") if isinstance(m, str) else m for m in spec["model"].get("merges", [])]
    merges = [m for m in merges if "".join(m) in kept]  # an embedding smaller than the tokenizer
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) for m in merges])
    ids = {t: i for i, t in by_id.items()}
    config_path = hf_dir / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    eos = tok_config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    if eos in ids:
        writer.add_eos_token_id(ids[eos])
    if "<|im_end|>" in ids:
        writer.add_eot_token_id(ids["<|im_end|>"])
    template_file = hf_dir / "chat_template.jinja"  # where transformers 5 saves it
    template = template_file.read_text() if template_file.is_file() else None
    template = tok_config.get("chat_template") or template
    if template:
        writer.add_chat_template(template)
