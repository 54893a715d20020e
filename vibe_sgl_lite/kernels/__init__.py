"""Attention implementations over the paged KV cache."""

from vibe_sgl_lite.kernels.attention import (
    ATTENTION_BACKENDS,
    BACKEND_ALIASES,
    AttentionBackend,
    AttentionMetadata,
    CpuPagedAttention,
    PagedAttentionBackend,
    PagedKernelBackend,
    TorchPagedAttention,
    default_attention_backend,
    get_attention_backend,
)

__all__ = [
    "ATTENTION_BACKENDS",
    "BACKEND_ALIASES",
    "AttentionBackend",
    "AttentionMetadata",
    "CpuPagedAttention",
    "PagedAttentionBackend",
    "PagedKernelBackend",
    "TorchPagedAttention",
    "default_attention_backend",
    "get_attention_backend",
]
