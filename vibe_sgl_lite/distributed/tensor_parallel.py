"""Cut a dense model into this rank's shard: tensor parallelism (TP) and expert parallelism (EP).

Which rank holds what, for ``tp_size = 2`` (Megatron-style):

    embed_tokens   vocab rows split          rank r: rows [r*V/2, (r+1)*V/2)   + all-reduce
    qkv_proj       column-parallel           rank r: its q heads, its kv heads (replicated
                                                      when tp_size > num_kv_heads)
    attention      local heads only          KV pool of rank r holds only its kv heads
    o_proj         row-parallel              rank r: input columns of its q heads + all-reduce
    gate_up_proj   column-parallel           rank r: its half of the intermediate units
    down_proj      row-parallel              rank r: the matching input columns    + all-reduce
    experts (EP)   split by expert id        rank r: experts [r*E/ep, (r+1)*E/ep)   + all-reduce
    lm_head        vocab rows split          rank r: its vocab slice's logits      + all-gather

Two all-reduces per layer (after ``o_proj`` and after the MLP or the experts), an all-reduce
after the embedding and one all-gather of the sampled rows' logits. Under EP the router is
replicated and every rank sees every token (the hidden states are already replicated after the
attention all-reduce), computes only its experts' contributions and the all-reduce sums them:
one ``[T, hidden]`` all-reduce per MoE layer, the same volume as a dense TP MLP, and no
all-to-all. (An all-to-all dispatch moves only ``top_k/E`` of the tokens but needs a second
exchange to bring results back; at the batch sizes of this engine the single all-reduce is the
simpler and equally cheap choice.)

Sharding happens on a model built on the ``meta`` device, before any memory is allocated (the
loader calls ``shard_model`` through its ``shard`` argument): each sharded module is created at
its local shape and carries ``checkpoint_slices`` (``models.weights.ShardedModule``): for each
of its parameters, one ``(dim, start, length)`` per checkpoint tensor it is filled from, which
the loader uses to read only that slice from safetensors. (Tied embeddings are re-tied by the
loader after materialisation.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vibe_sgl_lite.distributed.parallel_state import ParallelConfig, ParallelGroup, split_evenly
from vibe_sgl_lite.models.decoder import DecoderForCausalLM, DecoderLayer
from vibe_sgl_lite.models.layers import Attention, GatedMLP, MergedLinear
from vibe_sgl_lite.models.moe import SparseMoeBlock
from vibe_sgl_lite.models.weights import Slice


class ColumnParallelLinear(MergedLinear):
    """A merged projection (q/k/v or gate/up) holding this rank's output rows of each part."""

    def __init__(self, in_features: int, slices: list[Slice], bias: bool) -> None:
        super().__init__(in_features, [length for _, _, length in slices], bias=bias)
        self.checkpoint_slices = {"weight": slices, "bias": slices}


class RowParallelLinear(nn.Linear):
    """``y = all_reduce(x_local @ W_local^T) + b``: input features split over the group."""

    def __init__(
        self, start: int, in_features: int, out_features: int, bias: bool, group: ParallelGroup
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.group = group
        self.checkpoint_slices = {"weight": [(1, start, in_features)]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.group.all_reduce(F.linear(x, self.weight))
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Embedding):
    """Each rank embeds only the ids in its vocab slice; the all-reduce fills in the rest."""

    def __init__(self, vocab_start: int, num_local: int, dim: int, group: ParallelGroup) -> None:
        super().__init__(num_local, dim)
        self.vocab_start, self.group = vocab_start, group
        self.checkpoint_slices = {"weight": [(0, vocab_start, num_local)]}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.num_embeddings)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.group.all_reduce(out.masked_fill(outside.unsqueeze(-1), 0.0))


class ParallelLMHead(nn.Linear):
    """Logits of this rank's vocab slice, gathered along the vocab so every rank has them all."""

    def __init__(self, hidden: int, vocab_start: int, num_local: int, group: ParallelGroup) -> None:
        super().__init__(hidden, num_local, bias=False)
        self.group = group
        self.checkpoint_slices = {"weight": [(0, vocab_start, num_local)]}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.group.all_gather(F.linear(h, self.weight), dim=-1)


def kv_heads_of_rank(num_kv_heads: int, tp: ParallelGroup) -> tuple[int, int]:
    """``(first kv head, number of kv heads)`` of this rank; replicated if tp > num_kv_heads."""
    if num_kv_heads >= tp.size:
        return split_evenly(num_kv_heads, tp.size, tp.rank)
    if tp.size % num_kv_heads:
        raise ValueError(
            f"tp_size {tp.size} must be a multiple of num_key_value_heads {num_kv_heads}"
        )
    return tp.rank * num_kv_heads // tp.size, 1


class ExpertParallelMoeBlock(SparseMoeBlock):
    """This rank's experts of a ``SparseMoeBlock``; the all-reduce sums every rank's share."""

    def __init__(self, moe: SparseMoeBlock, group: ParallelGroup) -> None:
        start, n = split_evenly(moe.num_experts, group.size, group.rank)
        super().__init__(
            moe.hidden_size,
            moe.intermediate_size,
            moe.num_experts,
            moe.top_k,
            moe.norm_topk_prob,
            expert_start=start,
            num_local_experts=n,
        )
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(super().forward(x))


def _row_parallel(old: nn.Linear, start: int, length: int, tp: ParallelGroup) -> RowParallelLinear:
    layer = RowParallelLinear(start, length, old.out_features, old.bias is not None, tp)
    return layer.to(old.weight.device)


def shard_attention(attn: Attention, tp: ParallelGroup) -> None:
    hidden, d = attn.qkv_proj.in_features, attn.head_dim
    q_start, num_q = split_evenly(attn.num_heads, tp.size, tp.rank)
    kv_start, num_kv = kv_heads_of_rank(attn.num_kv_heads, tp)
    slices = [(0, q_start * d, num_q * d), (0, kv_start * d, num_kv * d)] * 1
    slices.append((0, kv_start * d, num_kv * d))
    device = attn.qkv_proj.weight.device
    attn.qkv_proj = ColumnParallelLinear(hidden, slices, attn.qkv_proj.bias is not None).to(device)
    attn.o_proj = _row_parallel(attn.o_proj, q_start * d, num_q * d, tp)
    attn.num_heads, attn.num_kv_heads = num_q, num_kv
    attn.q_size, attn.kv_size = num_q * d, num_kv * d


def shard_mlp(mlp: GatedMLP, tp: ParallelGroup) -> None:
    start, n = split_evenly(mlp.intermediate_size, tp.size, tp.rank)
    hidden = mlp.gate_up_proj.in_features
    device = mlp.gate_up_proj.weight.device
    slices = [(0, start, n), (0, start, n)]
    mlp.gate_up_proj = ColumnParallelLinear(hidden, slices, mlp.gate_up_proj.bias is not None)
    mlp.gate_up_proj.to(device)
    mlp.down_proj = _row_parallel(mlp.down_proj, start, n, tp)
    mlp.intermediate_size = n


def shard_model(model: DecoderForCausalLM, parallel: ParallelConfig) -> None:
    """Replace ``model``'s layers by this rank's shards, in place (see the module docstring).

    Only the layers this process runs (``model.layer_range``: a pipeline stage's) are cut."""
    tp, ep = parallel.tp, parallel.ep
    for i in model.layer_range:
        layer = model.layers[i]
        assert isinstance(layer, DecoderLayer)
        if tp.size > 1:
            shard_attention(layer.self_attn, tp)
        if isinstance(layer.mlp, SparseMoeBlock):
            if tp.size > 1 and ep.size != tp.size:
                raise ValueError(
                    "a mixture-of-experts model under tensor parallelism needs ep_size == tp_size "
                    f"(experts split by expert id), got tp_size={tp.size}, ep_size={ep.size}"
                )
            if ep.size > 1:
                layer.mlp = ExpertParallelMoeBlock(layer.mlp, ep).to(layer.mlp.w13.device)
        elif isinstance(layer.mlp, GatedMLP) and tp.size > 1:
            shard_mlp(layer.mlp, tp)
    if tp.size > 1:
        _shard_vocab(model, tp)


def _shard_vocab(model: DecoderForCausalLM, tp: ParallelGroup) -> None:
    """The embedding and the LM head, each where this rank holds it (a pipeline stage may hold
    neither)."""
    embed, head = model.embed_tokens, model.lm_head
    start, n = split_evenly(model.config.vocab_size, tp.size, tp.rank)
    if isinstance(embed, nn.Embedding):
        device = embed.weight.device
        model.embed_tokens = VocabParallelEmbedding(start, n, embed.embedding_dim, tp).to(device)
    if isinstance(head, nn.Linear):
        model.lm_head = ParallelLMHead(head.in_features, start, n, tp).to(head.weight.device)
