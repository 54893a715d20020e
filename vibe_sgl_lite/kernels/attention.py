"""Choosing an attention backend: the registry behind ``attention_backend=``.

The contract every backend honours is in ``kernels/backend.py``; the implementations are

    "cpu_paged"     CpuPagedAttention     CPU: decode reads pages in place (C++), extend per row
                                          through SDPA (cpu_paged.py + cpu_paged.cpp)
    "torch_native"  TorchPagedAttention   gather each row's pages, then SDPA (torch_backend.py):
                                          plain torch, the reference the others are tested against
    "triton"        TritonPagedAttention  Triton kernels walking the page table (triton/)

``"torch"`` and ``"reference"``, their earlier names, are accepted as aliases. Any object with
``prepare`` and ``forward`` (``AttentionBackend``) may be passed instead of a name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vibe_sgl_lite.kernels.backend import (
    AttentionBackend,
    AttentionMetadata,
    KVCache,
    PagedAttentionBackend,
    PagedKernelBackend,
)
from vibe_sgl_lite.kernels.cpu_paged import CpuPagedAttention
from vibe_sgl_lite.kernels.torch_backend import TorchPagedAttention


def _triton_backend() -> AttentionBackend:
    try:
        from vibe_sgl_lite.kernels.triton.backend import TritonPagedAttention
    except ImportError as e:
        raise ValueError(
            "attention_backend='triton' needs the triton package (pip install triton); "
            f"importing it failed: {e}"
        ) from e
    return TritonPagedAttention()


ATTENTION_BACKENDS: dict[str, Callable[[], AttentionBackend]] = {
    "cpu_paged": CpuPagedAttention,
    "torch_native": TorchPagedAttention,
    "triton": _triton_backend,
}
BACKEND_ALIASES = {"torch": "cpu_paged", "reference": "torch_native"}
"""Earlier names, still accepted: ``"torch"`` was the C++ kernel, ``"reference"`` gather + SDPA."""


def default_attention_backend(device: torch.device | str, kv_cache_dtype: str = "auto") -> str:
    """``"cpu_paged"`` on CPU; ``"triton"`` elsewhere when triton imports, else ``"torch_native"``.

    An int8 KV cache on CPU gets ``"torch_native"``: the C++ decode kernel reads float caches only.
    """
    if torch.device(device).type == "cpu":
        return "torch_native" if kv_cache_dtype == "int8" else "cpu_paged"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "torch_native"
    return "triton"


def resolve_attention_backend(
    name: str, device: torch.device | str, kv_cache_dtype: str = "auto"
) -> AttentionBackend:
    """The backend the ``attention_backend`` setting names (``"auto"``: the device's default)."""
    if name == "auto":
        name = default_attention_backend(device, kv_cache_dtype)
    return get_attention_backend(name)


def get_attention_backend(name_or_backend: str | AttentionBackend) -> AttentionBackend:
    """The backend called ``name_or_backend``, or the object itself when it is not a name."""
    if not isinstance(name_or_backend, str):
        return name_or_backend
    name = BACKEND_ALIASES.get(name_or_backend, name_or_backend)
    if name not in ATTENTION_BACKENDS:
        raise ValueError(
            f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)} (or the aliases "
            f"{', '.join(BACKEND_ALIASES)}) or an AttentionBackend object, got {name_or_backend!r}"
        )
    return ATTENTION_BACKENDS[name]()


__all__ = [
    "ATTENTION_BACKENDS",
    "BACKEND_ALIASES",
    "AttentionBackend",
    "AttentionMetadata",
    "CpuPagedAttention",
    "KVCache",
    "PagedAttentionBackend",
    "PagedKernelBackend",
    "TorchPagedAttention",
    "default_attention_backend",
    "get_attention_backend",
    "resolve_attention_backend",
]
