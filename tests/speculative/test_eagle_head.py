"""``EagleHead``: the paged head against transformers' layer, its loader's refusals, the asset.

The reference is transformers' own ``Qwen3DecoderLayer`` (plus ``nn.Linear`` and
``Qwen3RMSNorm``) with the same weights, run densely over each sequence: our head runs the same
math over a flat batch through a paged one-layer pool, prefill then one decode step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.model_factory import load_hf
from vibe_sgl_lite.batch import BatchRow, ForwardBatch
from vibe_sgl_lite.core.runner import default_model_path
from vibe_sgl_lite.kernels import TorchPagedAttention
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.speculative.eagle_head import EagleHead

pytestmark = pytest.mark.unit

TARGET = default_model_path()
BUNDLED_HEAD = TARGET.parent / f"{TARGET.name}-eagle"
"""Where ``speculative_algorithm="eagle"`` finds the bundled model's head (``eagle.py``)."""
PAGE_SIZE = 4

TARGET_CONFIG: dict[str, Any] = dict(
    architectures=["Qwen3ForCausalLM"],
    model_type="qwen3",
    vocab_size=96,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=True,
)


class ReferenceHead(nn.Module):
    """The head from transformers' modules, named as a checkpoint names them."""

    def __init__(self, config: Any) -> None:
        from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RMSNorm

        super().__init__()
        self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=True)
        self.layers = nn.ModuleList([Qwen3DecoderLayer(config, layer_idx=0)])
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, embedded: torch.Tensor, features: torch.Tensor, rotary: nn.Module
    ) -> torch.Tensor:
        """One sequence, densely: ``embedded, features [S, H]`` -> ``[S, H]``."""
        z = self.fc(torch.cat([embedded, features], dim=-1))[None]
        n = z.shape[1]
        mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
        cos_sin = rotary(z, torch.arange(n)[None])
        out: torch.Tensor = self.norm(
            self.layers[0](z, attention_mask=mask, position_embeddings=cos_sin)
        )
        return out[0]


def write_head(folder: Path, config: dict[str, Any], seed: int = 0) -> tuple[ReferenceHead, Any]:
    """A random head folder for ``config``; returns the reference modules and their config."""
    from transformers import Qwen3Config

    hf_config = Qwen3Config(**{**config, "num_hidden_layers": 1})
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    head = ReferenceHead(hf_config).eval()
    with torch.no_grad():  # spread everything, norms included, so a slip cannot hide
        for param in head.parameters():
            param.copy_(torch.randn_like(param) * 0.2 + (1.0 if param.dim() == 1 else 0.0))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    save_file(
        {k: v.contiguous() for k, v in head.state_dict().items()}, folder / "model.safetensors"
    )
    return head, hf_config


def test_paged_forward_matches_transformers_layer(tmp_path: Path) -> None:
    """Two rows of different lengths: prefill, then one decode step (row 1 opens a new page)."""
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    reference, hf_config = write_head(tmp_path / "head", TARGET_CONFIG)
    target = ModelConfig.from_dict(TARGET_CONFIG)
    head = EagleHead.from_pretrained(tmp_path / "head", target, dtype=torch.float32)
    embed = nn.Embedding(target.vocab_size, target.hidden_size)
    pool = head.new_kv_pool(num_pages=8, page_size=PAGE_SIZE, dtype=torch.float32, device="cpu")
    backend = TorchPagedAttention()
    gen = torch.Generator().manual_seed(1)
    ids = [torch.randint(0, target.vocab_size, (n,), generator=gen) for n in (8, 5)]
    feats = [torch.randn(n, target.hidden_size, generator=gen) for n in (8, 5)]
    pages = [[1, 2], [3, 4]]

    def step(rows: list[BatchRow], chunks: list[slice]) -> torch.Tensor:
        batch = ForwardBatch.build(rows, PAGE_SIZE, torch.device("cpu"))
        backend.prepare(batch)
        with torch.no_grad():
            return head(
                torch.cat([i[c] for i, c in zip(ids, chunks)]),
                torch.cat([f[c] for f, c in zip(feats, chunks)]),
                batch,
                pool,
                backend,
                embed,
            )

    prefill = [slice(0, 7), slice(0, 4)]
    decode = [slice(7, 8), slice(4, 5)]
    out_prefill = step(
        [BatchRow(ids[r][prefill[r]].tolist(), 0, pages[r][: 2 - r], True) for r in range(2)],
        prefill,
    )
    out_decode = step(
        [BatchRow(ids[r][decode[r]].tolist(), decode[r].start, pages[r], True) for r in range(2)],
        decode,
    )
    assert out_prefill.shape == (11, target.hidden_size) and out_decode.shape == (2, 64)
    rotary = Qwen3RotaryEmbedding(hf_config)
    with torch.no_grad():
        dense = [reference(embed(ids[r]), feats[r], rotary) for r in range(2)]
    torch.testing.assert_close(out_prefill[:7], dense[0][:7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_prefill[7:], dense[1][:4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out_decode, torch.stack([dense[0][7], dense[1][4]]), atol=1e-5, rtol=1e-5
    )
    assert dense[0].abs().max() > 0.5  # not a vacuous comparison of near-zero tensors


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("hidden_size", 32, "hidden_size"),
        ("vocab_size", 97, "vocab_size"),
        ("architectures", ["LlamaForCausalLM"], "architectures"),
    ],
)
def test_from_pretrained_refuses_a_head_for_another_model(
    tmp_path: Path, field: str, value: Any, named: str
) -> None:
    write_head(tmp_path / "head", {**TARGET_CONFIG, field: value})
    target = ModelConfig.from_dict(TARGET_CONFIG)
    with pytest.raises(ValueError, match=rf"speculative_draft_model_path.*{named}"):
        EagleHead.from_pretrained(tmp_path / "head", target)


def test_from_pretrained_refuses_a_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TARGET_CONFIG))
    target = ModelConfig.from_dict(TARGET_CONFIG)
    with pytest.raises(ValueError, match="speculative_draft_model_path.*model.safetensors"):
        EagleHead.from_pretrained(tmp_path, target)


def test_from_pretrained_refuses_more_than_one_layer(tmp_path: Path) -> None:
    write_head(tmp_path / "head", TARGET_CONFIG)
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    (tmp_path / "head" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(ValueError, match="speculative_draft_model_path.*num_hidden_layers"):
        EagleHead.from_pretrained(tmp_path / "head", ModelConfig.from_dict(TARGET_CONFIG))


HELD_OUT_FLOOR = 0.6
"""Teacher-forced top-1 agreement with the target's greedy token on held-out text: the training
script measured the shipped head at 0.779 over 8192 held-out positions (``training_stats.json``,
``acceptance.teacher_forced_top1``), this test's 587 tokens at 0.770; an untrained head: ~0."""


def held_out_rows(tokenizer_file: Path, text_file: Path) -> list[list[int]]:
    """Two passages of the held-out play (never trained on), as token ids."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    speeches = text_file.read_text().split("\n\n")
    passages = ("\n\n".join(speeches[40:48]), "\n\n".join(speeches[90:96]))
    return [tokenizer.encode(passage).ids for passage in passages]


def test_shipped_head_predicts_the_bundled_models_greedy_tokens() -> None:
    """The asset loads for the bundled model and, through the paged path, agrees with the
    target's greedy token at depth 1 on held-out text above the floor."""
    stats = json.loads((BUNDLED_HEAD / "training_stats.json").read_text())
    assert stats["acceptance"]["teacher_forced_top1"] > HELD_OUT_FLOOR
    assert (BUNDLED_HEAD / "model.safetensors").stat().st_size < 4_000_000
    target = load_hf(TARGET)
    head = EagleHead.from_pretrained(BUNDLED_HEAD, ModelConfig.from_path(TARGET))
    rows = held_out_rows(TARGET / "tokenizer.json", TARGET / "heldout.txt")
    page_size, pages_per_row = 16, 32
    batch = ForwardBatch.build(
        [
            BatchRow(ids, 0, [1 + r * pages_per_row + p for p in range(-(-len(ids) // 16))], True)
            for r, ids in enumerate(rows)
        ],
        page_size,
        torch.device("cpu"),
    )
    pool = head.new_kv_pool(1 + 2 * pages_per_row, page_size, torch.float32, "cpu")
    backend = TorchPagedAttention()
    backend.prepare(batch)
    with torch.no_grad():
        features = [
            target(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
            for ids in rows
        ]
        previous = torch.cat([torch.cat([torch.zeros_like(f[:1]), f[:-1]]) for f in features])
        out = head(batch.input_ids, previous, batch, pool, backend, target.model.embed_tokens)
        drafts = target.lm_head(out).argmax(-1)
        greedy = target.lm_head(torch.cat(features)).argmax(-1)
    assert 200 < batch.num_tokens <= 2 * pages_per_row * page_size
    assert (drafts == greedy).float().mean().item() > HELD_OUT_FLOOR
