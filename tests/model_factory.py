"""Tiny random-weight models in Hugging Face format, built with transformers' own classes.

Tests load these folders through our real loader and compare against transformers' real model:
the reference implementation that nobody here wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

# Text for the fixture tokenizer: plain English, code-ish text and multi-byte characters so that
# incremental detokenisation meets characters split across byte-level tokens.
TOKENIZER_CORPUS = [
    "Once upon a time there was a tiny language model that lived on a small CPU.",
    "The quick brown fox jumps over the lazy dog. Explain KV caches: keys and values.",
    "def forward(self, x): return self.proj(x) + 1  # residual",
    "Café naïve résumé façade — déjà vu. Über straße.",
    "日本語のテキストと中文文本，还有한국어 문장.",
    "Emoji: 🙂🚀🔥 and symbols ∑ ∫ √ ≈ ≠ ∞.",
    "ROMEO: But soft, what light through yonder window breaks? JULIET: O Romeo.",
    "1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828",
]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(out_dir: Path, vocab_size: int = 384) -> Path:
    """Train a byte-level BPE tokenizer with `tokenizers` and save it as an HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TOKENIZER_CORPUS * 4, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(str(out_dir))
    return out_dir


def build_hf_model(
    architecture: str,
    out_dir: Path,
    tokenizer_dir: Path,
    *,
    seed: int = 0,
    initializer_range: float = 0.2,
    max_shard_size: str | None = None,
    **config_kwargs: Any,
) -> Path:
    """Write a random transformers ``architecture`` (config, safetensors, tokenizer) to ``out_dir``.

    ``architecture`` names both classes: ``"Qwen2"`` -> ``Qwen2Config`` + ``Qwen2ForCausalLM``.
    The large ``initializer_range`` spreads the logits apart, so greedy parity does not hinge on
    near-ties between random tokens.
    """
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config_cls = getattr(transformers, f"{architecture}Config")
    model_cls = getattr(transformers, f"{architecture}ForCausalLM")
    config_kwargs.setdefault("vocab_size", len(tok))
    config = config_cls(
        initializer_range=initializer_range,
        max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        pad_token_id=tok.pad_token_id,
        **config_kwargs,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # transformers zeroes biases; random ones make the parity test see them
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, initializer_range)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(str(out_dir), **kwargs)
    tok.save_pretrained(str(out_dir))
    return out_dir


def build_qwen3(
    out_dir: Path,
    tokenizer_dir: Path,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 16,
    tie_word_embeddings: bool = False,
    **extra: Any,
) -> Path:
    """Write a random Qwen3ForCausalLM (config, safetensors, tokenizer) into ``out_dir``."""
    return build_hf_model(
        "Qwen3",
        out_dir,
        tokenizer_dir,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        tie_word_embeddings=tie_word_embeddings,
        **extra,
    )


def build_qwen2(out_dir: Path, tokenizer_dir: Path, **extra: Any) -> Path:
    """A random Qwen2 (Qwen2.5 layout): q/k/v biases, GQA 2, head_dim 16, untied embeddings."""
    kwargs: dict[str, Any] = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return build_hf_model("Qwen2", out_dir, tokenizer_dir, **{**kwargs, **extra})


def build_llama(out_dir: Path, tokenizer_dir: Path, **extra: Any) -> Path:
    """A random Llama: GQA 2, head_dim 16; pass ``tie_word_embeddings``/``rope_parameters``..."""
    kwargs: dict[str, Any] = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    return build_hf_model("Llama", out_dir, tokenizer_dir, **{**kwargs, **extra})


def build_qwen3_moe(out_dir: Path, tokenizer_dir: Path, **extra: Any) -> Path:
    """A random Qwen3-MoE: 8 experts, top 2, layers 1 and 3 sparse (``decoder_sparse_step=2``)."""
    kwargs: dict[str, Any] = dict(
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=8,
        num_experts_per_tok=2,
        decoder_sparse_step=2,
        norm_topk_prob=True,
    )
    return build_hf_model("Qwen3Moe", out_dir, tokenizer_dir, **{**kwargs, **extra})


def load_hf(model_dir: Path, dtype: torch.dtype = torch.float32) -> Any:
    """The reference: transformers' own implementation with the same weights."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()


def hf_greedy(model: Any, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation from transformers' ``generate`` (no EOS stop, fp32)."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt_ids) :].tolist()


def copy_with_json(src: Path, dst: Path, file: str, **changes: Any) -> Path:
    """A copy of folder ``src`` at ``dst`` whose JSON ``file`` has ``changes`` applied."""
    shutil.copytree(src, dst)
    values = json.loads((dst / file).read_text())
    values.update(changes)
    (dst / file).write_text(json.dumps(values))
    return dst


def read_config(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "config.json").read_text())


def prefill_logits(
    model_dir: Path,
    prompts: list[list[int]],
    page_size: int = 4,
    dtype: torch.dtype = torch.float32,
    quantization: str | None = None,
) -> torch.Tensor:
    """Our logits at every position of each prompt, from one flat batch through the paged pool.

    Returns ``[sum(len(p) for p in prompts), vocab]``, the prompts' rows one after another.
    """
    from vibe_sgl_lite.batch import BatchRow, ForwardBatch
    from vibe_sgl_lite.kernels import TorchPagedAttention
    from vibe_sgl_lite.memory import KVPool
    from vibe_sgl_lite.models import load_model

    model, cfg = load_model(model_dir, dtype=dtype, quantization=quantization)
    pool = KVPool(
        cfg.num_hidden_layers, 64, page_size, cfg.num_key_value_heads, cfg.head_dim, dtype
    )
    rows, next_page = [], 1
    for ids in prompts:
        n_pages = -(-len(ids) // page_size)
        rows.append(BatchRow(ids, 0, list(range(next_page, next_page + n_pages)), True))
        next_page += n_pages
    batch = ForwardBatch.build(rows, page_size, torch.device("cpu"))
    batch.sample_indices = torch.arange(batch.num_tokens)  # every position, not just the last
    backend = TorchPagedAttention()
    backend.prepare(batch)
    with torch.no_grad():
        return model(batch, pool, backend)


def hf_prefill_logits(model: Any, prompts: list[list[int]]) -> torch.Tensor:
    """transformers' logits for each prompt run alone, concatenated like ``prefill_logits``."""
    with torch.no_grad():
        return torch.cat([model(torch.tensor([ids])).logits[0] for ids in prompts])


def build_looping_qwen3(
    out_dir: Path,
    tokenizer_dir: Path,
    cycles: list[list[int]],
    *,
    scale: float = 4.0,
    scales: dict[int, float] | None = None,
    hidden_size: int = 64,
) -> Path:
    """A Qwen3 whose greedy output loops: after token ``cycle[i]`` comes ``cycle[i + 1]``
    (wrapping), for each cycle in ``cycles`` (distinct token ids, at most ``hidden_size``).

    Hand-set weights, built with transformers' own classes: ``o_proj`` and ``down_proj`` are
    zero, so every layer adds nothing and each position sees only its own token; the ``n``-th
    cycle token embeds as the one-hot ``e_n`` (RMSNorm makes it ``sqrt(hidden) * e_n``), and
    ``lm_head[next, n] = scale``. The next-token logits of a cycle token are therefore
    ``scale * sqrt(hidden)`` (8 * scale at hidden 64) for its successor and 0 for the other
    tokens: with the default scale 4 the softmax is one-hot to ~1e-12 (entropy ~1e-10 nats);
    ``scales[token]`` overrides the scale of that token's transition (0.1 gives an almost flat
    distribution, entropy ~ln(vocab), whose argmax is still the successor). Tokens outside the
    cycles embed as 0 and predict nothing in particular: end a prompt with a cycle token.
    """
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    order = [t for cycle in cycles for t in cycle]
    assert len(set(order)) == len(order) <= hidden_size, "cycle tokens must be distinct, <= hidden"
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.zero_()
        head.zero_()
        for cycle in cycles:
            for i, token in enumerate(cycle):
                n = order.index(token)
                embed[token, n] = 1.0
                head[cycle[(i + 1) % len(cycle)], n] = (scales or {}).get(token, scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir
