"""Load a llama.cpp ``.gguf`` file: its metadata becomes a config, its tensors HF-named weights.

A GGUF file holds everything a Hugging Face folder holds, under llama.cpp's names:

* **config**: metadata keys such as ``llama.block_count`` or ``qwen3.attention.head_count_kv``;
  ``gguf_config`` renames them into a ``config.json``-shaped dict for ``ModelConfig.from_dict``.
* **weights**: ``token_embd.weight``, ``blk.{i}.attn_q.weight`` ..., mostly block-quantised
  (Q4_K, Q8_0 ...). ``iter_gguf_tensors`` dequantises them with the ``gguf`` package one tensor at a
  time, casts each to the requested dtype and yields it under its Hugging Face name, which is what
  ``load_packed_weights`` consumes. By default the model then holds plain float/bfloat16
  weights, so a Q4 file costs as much memory as its float checkpoint once loaded; with a
  ``quantization`` mode the Q8_0/Q4_0/Q4_1 matrices keep their own codes instead
  (``block_codes``, multiplied as stored by ``models/gguf_linear.py``).
* **tokenizer**: vocabulary, merges and chat template; transformers builds it
  (``AutoTokenizer.from_pretrained(folder, gguf_file=name)``, see ``core/tokenizer.py``).

Two things llama.cpp's converter changes are undone here:

* For ``general.architecture == "llama"`` it permutes the rows of ``attn_q`` and ``attn_k`` (from
  the "rotate half" rotary layout to the interleaved one its kernels use). ``_unpermute`` reverses
  it, exactly as transformers' own GGUF loader does. Qwen architectures are stored unpermuted.
* Mixture-of-experts weights are stacked per layer (``ffn_gate_exps [E, I, hidden]``); they are
  yielded one expert at a time under the Hub's per-expert names, dequantising each expert's rows
  alone so the stack is never in memory as floats.

The metadata is read with our own short table rather than through ``AutoConfig``: transformers
re-parses the whole vocabulary to build a config (seconds per load) and misses a few fields we
need (the expert width of Qwen3-MoE, the end-of-turn ids).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vibe_sgl_lite.models.quantization import QuantizedWeight

GGUF_MAGIC = b"GGUF"

# general.architecture -> (transformers model_type, our registered class)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "qwen3moe": ("qwen3_moe", "Qwen3MoeForCausalLM"),
}

# "{arch}.<key>" metadata -> config.json field (the same for every architecture above)
CONFIG_KEYS: dict[str, str] = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "block_count": "num_hidden_layers",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
    "expert_count": "num_experts",
    "expert_used_count": "num_experts_per_tok",
    "expert_feed_forward_length": "moe_intermediate_size",
}

# Every token id that ends a turn; chat models often mark several (Llama 3: <|eot_id|>, <|eom_id|>).
EOS_KEYS = (
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.eom_token_id",
)

# GGUF tensor name -> Hugging Face name (``blk.{i}.`` becomes ``model.layers.{i}.``)
GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
}
EXPERT_TENSORS = {
    "ffn_gate_exps": "gate_proj",
    "ffn_up_exps": "up_proj",
    "ffn_down_exps": "down_proj",
}


def is_gguf_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic bytes (whatever its suffix)."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def _gguf_module() -> Any:
    """The ``gguf`` package, imported on first use: it is an optional extra.

    Every GGUF entry point (config, tensors, ``ModelRunner``) reaches the package through here,
    so a missing one fails as this one line instead of a ``ModuleNotFoundError`` deep inside a
    load. An installed ``gguf`` that fails to import (for example a release older than 0.17
    under numpy 2) is told apart: "install it" would send the user the wrong way."""
    try:
        import gguf
    except ImportError as exc:
        if exc.name == "gguf":
            raise ImportError(
                "loading a .gguf file needs the 'gguf' package: pip install 'vibe-sgl-lite[gguf]'"
            ) from exc
        raise ImportError(
            f"the installed 'gguf' package failed to import ({exc}); "
            "pip install 'vibe-sgl-lite[gguf]' installs a supported version"
        ) from exc
    return gguf


def _reader(path: Path) -> Any:
    """The file's ``GGUFReader``, shared by every reader of it in this process.

    Parsing a header takes seconds (every vocabulary entry is a separate field part) and the
    tensors are a read-only memory map, so one reader serves the config, the tokenizer's end ids
    and the weights, and a second runner on the same file. The file's ``mtime_ns`` and size are
    part of the key, so a rewritten file is read again."""
    p = path.resolve()
    stat = p.stat()
    return _cached_reader(str(p), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _cached_reader(path: str, mtime_ns: int, size: int) -> Any:
    return _gguf_module().GGUFReader(path)


@functools.lru_cache(maxsize=4)
def _metadata(path: str, mtime_ns: int, size: int) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``(scalar metadata, tensor names)``, cached: the engine asks for the config, the tokenizer's
    end ids and the loader's config in turn. Long arrays (the vocabulary) keep only their
    length."""
    reader = _reader(Path(path))
    value_type = _gguf_module().GGUFValueType
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0] == value_type.ARRAY and len(field.data) > 64:
            meta[key] = len(field.data)
        else:
            meta[key] = field.contents()
    return meta, tuple(t.name for t in reader.tensors)


def read_metadata(path: str | os.PathLike[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A GGUF file's metadata (vocabulary-sized arrays replaced by their length) and tensor names."""
    p = Path(path).resolve()
    stat = p.stat()
    return _metadata(str(p), stat.st_mtime_ns, stat.st_size)


def eos_token_ids(path: str | os.PathLike[str]) -> set[int]:
    """Every end-of-sequence / end-of-turn id the file names."""
    meta, _ = read_metadata(path)
    return {int(meta[k]) for k in EOS_KEYS if meta.get(k) is not None}


def gguf_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``config.json``-shaped dict for the model in ``path``; refuses what we cannot run."""
    meta, names = read_metadata(path)
    arch = str(meta.get("general.architecture"))
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} ({path}) is not supported; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    model_type, class_name = ARCHITECTURES[arch]
    cfg: dict[str, Any] = {"architectures": [class_name], "model_type": model_type}
    for key, field_name in CONFIG_KEYS.items():
        if f"{arch}.{key}" in meta:
            cfg[field_name] = meta[f"{arch}.{key}"]
    if "vocab_size" not in cfg:  # older files state it only as the vocabulary's length
        cfg["vocab_size"] = meta["tokenizer.ggml.tokens"]
    heads, hidden = int(cfg["num_attention_heads"]), int(cfg["hidden_size"])
    cfg.setdefault("head_dim", hidden // heads)
    rotary = meta.get(f"{arch}.rope.dimension_count")
    if rotary is not None and int(rotary) != int(cfg["head_dim"]):
        raise ValueError(
            f"{path}: rotary over {rotary} of {cfg['head_dim']} head dimensions (partial rotary) "
            "is not supported"
        )
    if "rope_freqs.weight" in names:
        # llama.cpp stores Llama 3.1+ "llama3" rope scaling as per-frequency factors, without the
        # parameters our config-driven rotary needs; running without them would silently diverge.
        raise ValueError(
            f"{path} carries rope_freqs (Llama 3.1+ rope scaling), which GGUF loading does not "
            "support yet; load the Hugging Face folder instead"
        )
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling == "linear":
        cfg["rope_scaling"] = {
            "rope_type": "linear",
            "factor": float(meta[f"{arch}.rope.scaling.factor"]),
        }
    elif scaling not in (None, "none"):
        raise ValueError(f"{path}: rope scaling {scaling!r} is not supported")
    cfg["tie_word_embeddings"] = "output.weight" not in names
    cfg["attention_bias"] = "blk.0.attn_q.bias" in names
    cfg["mlp_bias"] = "blk.0.ffn_gate.bias" in names
    if arch == "qwen3moe":
        # llama.cpp always renormalises the top-k router weights for this architecture.
        cfg["norm_topk_prob"] = True
    eos = sorted(eos_token_ids(path))
    if eos:
        cfg["eos_token_id"] = eos
    if meta.get("tokenizer.ggml.bos_token_id") is not None:
        cfg["bos_token_id"] = int(meta["tokenizer.ggml.bos_token_id"])
    return cfg


def _unpermute(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (interleaved rotary pairs -> "rotate half" halves).

    llama.cpp wrote ``w.reshape(H, 2, D/2, ...).swapaxes(1, 2)``; this is its inverse. Works for
    weights ``[H*D, in]`` and biases ``[H*D]`` alike."""
    rest = weight.shape[1:]
    return weight.reshape(num_heads, -1, 2, *rest).transpose(1, 2).reshape(weight.shape)


def _dequantize(raw: np.ndarray, qtype: Any, dtype: torch.dtype) -> torch.Tensor:
    """One tensor's stored data as a fresh ``dtype`` torch tensor.

    Float storage is reinterpreted, not routed through float32 (an F16/BF16 file loaded as
    bfloat16 never takes 2x its size); block-quantised storage is dequantised by the ``gguf``
    package into float32 and cast. The result never aliases the read-only file mapping."""
    gguf = _gguf_module()
    kinds = gguf.GGMLQuantizationType
    if qtype == kinds.BF16:
        return torch.from_numpy(np.array(raw).view(np.uint16)).view(torch.bfloat16).to(dtype)
    if qtype in (kinds.F32, kinds.F16):
        return torch.from_numpy(np.array(raw)).to(dtype)
    try:
        values = gguf.dequantize(raw, qtype)
    except NotImplementedError as exc:
        raise ValueError(f"GGUF tensor type {qtype.name} cannot be dequantised: {exc}") from exc
    return torch.from_numpy(values).to(dtype)


BLOCK_TYPES = {"Q8_0": "q8_0", "Q4_0": "q4_1", "Q4_1": "q4_1"}
"""GGUF block types kept as their own codes (``block_codes``) -> the ``QuantizedWeight`` mode."""


def block_codes(raw: np.ndarray, qtype: Any) -> QuantizedWeight | None:
    """A Q8_0, Q4_0 or Q4_1 matrix as its own codes and block scales, or ``None`` for any other
    storage (what ``kernels/gguf_gemm.py`` multiplies as stored)::

        Q8_0  block = d (fp16), 32 int8 q             w = d * q         -> mode "q8_0"
        Q4_1  block = d, m (fp16), 16 bytes of codes  w = d * q + m     -> mode "q4_1"
        Q4_0  block = d (fp16), 16 bytes of codes     w = d * (q - 8)   -> mode "q4_1", m = -8 d

    (``-8 d`` is exact in fp16.) Byte ``j`` of a 4-bit block holds code ``j`` in its low nibble
    and code ``j + 16`` in its high one. ``raw``: uint8 ``[N, bytes per row]``; returns ``q``
    ``[N, K]`` (int8 or uint8 codes), ``scale`` = d and ``zero`` = m float32 ``[N, K / 32]``."""
    name = getattr(qtype, "name", None)
    if name not in BLOCK_TYPES or raw.ndim != 2:
        return None
    head = {"Q8_0": 2, "Q4_0": 2, "Q4_1": 4}[name]  # bytes before the codes: d, or d and m
    rows = raw.shape[0]
    blocks = np.array(raw).reshape(rows, -1, head + (32 if name == "Q8_0" else 16))
    d = np.ascontiguousarray(blocks[..., 0:2]).view(np.float16)[..., 0].astype(np.float32)
    to_torch = torch.from_numpy
    if name == "Q8_0":
        q = np.ascontiguousarray(blocks[..., head:]).view(np.int8).reshape(rows, -1)
        return QuantizedWeight("q8_0", to_torch(q), to_torch(d), group_size=32)
    packed = blocks[..., head:]
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).reshape(rows, -1)
    if name == "Q4_1":
        m = np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0].astype(np.float32)
    else:
        m = -8 * d
    return QuantizedWeight("q4_1", to_torch(codes), to_torch(d), to_torch(m), group_size=32)


def _hf_name(gguf_name: str) -> tuple[str, str | None]:
    """``(hf module path, expert projection or None)`` for a GGUF tensor name minus its suffix."""
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name], None
    parts = gguf_name.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        prefix = f"model.layers.{parts[1]}"
        if parts[2] in LAYER_TENSORS:
            return f"{prefix}.{LAYER_TENSORS[parts[2]]}", None
        if parts[2] in EXPERT_TENSORS:
            return f"{prefix}.mlp.experts", EXPERT_TENSORS[parts[2]]
    raise ValueError(f"GGUF tensor {gguf_name!r} has no Hugging Face counterpart here")


def iter_gguf_tensors(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32, *, keep_blocks: bool = False
) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """``(hf_name, tensor)`` for every tensor of the file, dequantised to ``dtype`` one at a time.

    Only the tensor being yielded (and its float32 dequantisation, for quantised storage) is in
    memory besides the model, so peak memory stays near the loaded model's size.

    With ``keep_blocks``, a Q8_0/Q4_0/Q4_1 matrix (other than a per-expert stack) is yielded as
    its own codes instead (``block_codes``): for the quantised modes, which multiply them as
    stored (``models/gguf_linear.py``) or requantise them."""
    config = gguf_config(path)
    permute = config["model_type"] == "llama"
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    reader = _reader(Path(path))
    for tensor in reader.tensors:
        stem, _, suffix = tensor.name.rpartition(".")
        hf_module, expert_proj = _hf_name(stem)
        if expert_proj is not None:
            # One expert at a time: each row of the stack is an independent quantised tensor.
            for e in range(tensor.data.shape[0]):
                name = f"{hf_module}.{e}.{expert_proj}.{suffix}"
                yield name, _dequantize(tensor.data[e], tensor.tensor_type, dtype)
            continue
        codes = block_codes(tensor.data, tensor.tensor_type) if keep_blocks else None
        weight = codes if codes is not None else _dequantize(tensor.data, tensor.tensor_type, dtype)
        proj = hf_module.rsplit(".", 1)[-1]
        if permute and proj in heads:
            num_heads = int(heads[proj])
            weight = (
                weight.map_rows(lambda t: _unpermute(t, num_heads))
                if isinstance(weight, QuantizedWeight)
                else _unpermute(weight, num_heads)
            )
        yield f"{hf_module}.{suffix}", weight
