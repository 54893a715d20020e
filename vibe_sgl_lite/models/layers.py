"""Building blocks shared by every decoder in ``models/``: norm, rotary embedding, MLP.

All layers work on *flat* token tensors ``[num_tokens, ...]``: the batch dimension is gone, and
``ForwardBatch`` says which tokens belong to which sequence.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vibe_sgl_lite.batch.forward_batch import ForwardBatch
from vibe_sgl_lite.kernels.attention import AttentionBackend
from vibe_sgl_lite.memory.kv_pool import LayerKV


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``, computed in float32 like transformers does, then cast back."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def _inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """Per-pair rotation frequencies ``[head_dim // 2]``, with Llama-3 style rescaling if asked."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported rope type {kind!r}")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding as HF Llama/Qwen apply it ("rotate half" layout).

    ``cos``/``sin`` are precomputed for every position once: ``[max_positions, head_dim]``.
    """

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(
        self, head_dim: int, max_positions: int, theta: float, scaling: dict[str, Any] | None
    ) -> None:
        super().__init__()
        self.head_dim, self.max_positions, self.theta = head_dim, max_positions, theta
        self.scaling = scaling
        self.register_buffer("cos", torch.empty(max_positions, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(max_positions, head_dim), persistent=False)
        self.build()

    def build(self) -> None:
        """(Re)compute the tables in float32 on the buffers' device (also after ``to_empty``)."""
        device = self.cos.device
        if device.type == "meta":
            return
        inv_freq = _inv_freq(self.head_dim, self.theta, self.scaling).to(device)
        positions = torch.arange(self.max_positions, dtype=torch.float32, device=device)
        emb = torch.cat((torch.outer(positions, inv_freq),) * 2, dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``q: [T, Hq, D]``, ``k: [T, Hkv, D]``, ``positions: [T]``."""
        cos = self.cos[positions].unsqueeze(1).to(q.dtype)
        sin = self.sin[positions].unsqueeze(1).to(q.dtype)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class GatedMLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))`` with gate and up merged into one matmul.

    ``x: [T, hidden] -> [T, hidden]``. ``bias`` is Llama's ``mlp_bias`` (all three projections).
    """

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj = MergedLinear(
            hidden_size, [intermediate_size, intermediate_size], bias=bias
        )
        self.down_proj: nn.Linear = Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Linear(nn.Linear):
    """``nn.Linear`` whose products of at most ``fp32_gemm_rows`` rows run our float32 loop
    (``kernels/fp32_gemm.py``) instead of ``F.linear``.

    ``fp32_gemm_rows`` is 0, so always ``F.linear``, unless ``models/weight_layout.py`` stored
    the weight column-major (float32 on CPU), built the loop and set it from
    ``fp32_gemm_max_rows``, with ``fp32_gemm_isa`` the loop's instruction set. The op is called
    directly: this runs for every product of every step.
    """

    fp32_gemm_rows = 0
    fp32_gemm_isa = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.shape[0] <= self.fp32_gemm_rows:
            op = torch.ops.vibe_fp32_gemm.fp32_linear
            return op(x.contiguous(), self.weight.t(), self.bias, self.fp32_gemm_isa)
        return F.linear(x, self.weight, self.bias)


class MergedLinear(Linear):
    """One matmul for several projections that read the same input (q/k/v, gate/up).

    ``shard_sizes`` are the output widths of the original checkpoint tensors, in order; the loader
    copies checkpoint tensor ``i`` into rows ``offset(i) .. offset(i) + shard_sizes[i]``.
    """

    def __init__(self, in_features: int, shard_sizes: list[int], bias: bool = False) -> None:
        super().__init__(in_features, sum(shard_sizes), bias=bias)
        self.shard_sizes = shard_sizes

    def shard_offset(self, index: int) -> int:
        return sum(self.shard_sizes[:index])


class Attention(nn.Module):
    """Grouped-query self-attention over the paged KV cache.

    The projections and rotary embedding live here; the attention arithmetic itself (writing the
    new K/V into the pool and attending over each sequence's pages) belongs to the
    ``AttentionBackend`` passed in, so research code can swap it without touching the model.

    The family differs only in flags: ``qkv_bias`` (Qwen2 always, Llama/Qwen3 when
    ``attention_bias``), ``o_bias`` (Llama/Qwen3 when ``attention_bias``, never Qwen2) and
    ``qk_norm_eps`` (Qwen3: an RMSNorm over each head's ``head_dim`` before rotary).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        rotary: RotaryEmbedding,
        *,
        qkv_bias: bool = False,
        o_bias: bool = False,
        qk_norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        self.scale = head_dim**-0.5
        self.qkv_proj = MergedLinear(
            hidden_size, [self.q_size, self.kv_size, self.kv_size], bias=qkv_bias
        )
        self.o_proj: nn.Linear = Linear(self.q_size, hidden_size, bias=o_bias)
        self.q_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.k_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.rotary = rotary

    def forward(
        self,
        x: torch.Tensor,
        batch: ForwardBatch,
        kv_cache: LayerKV,
        backend: AttentionBackend,
    ) -> torch.Tensor:
        """``x: [T, hidden]`` -> ``[T, hidden]``; ``kv_cache`` is this layer's slice of the pool."""
        T = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(T, self.num_heads, self.head_dim)
        k = k.view(T, self.num_kv_heads, self.head_dim)
        v = v.view(T, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(batch.positions, q, k)
        out = backend.forward(q, k, v, kv_cache, batch, self.scale)
        return self.o_proj(out.reshape(T, self.q_size))
