"""How many KV pages the engine preallocates, and how long one request may grow.

    max_total_tokens given   ->  exactly that many tokens of pages
    else                         mem_fraction of the free memory (RAM on CPU, the GPU's free
                                 bytes on CUDA), capped at what max_running_requests requests of
                                 max_model_len tokens could ever use
    max_model_len            ->  the model's positions, or the pool if smaller; an explicit value
                                 above either is refused with the setting to change

Both are decided once, at construction, before any worker process starts.
"""

from __future__ import annotations

import torch

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.memory.kv_pool import KVPool
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.utils.memory import available_memory_bytes


def plan_kv_pages(config: EngineConfig, model: ModelConfig, device: torch.device) -> int:
    """Pool size in pages: ``max_total_tokens`` if given, else a share of free memory (capped)."""
    if config.max_total_tokens is not None:
        return -(-config.max_total_tokens // config.page_size)
    per_token = KVPool.bytes_per_token(
        model.num_hidden_layers, model.num_key_value_heads, model.head_dim, config.kv_torch_dtype
    )
    budget_tokens = int(available_memory_bytes(device) * config.mem_fraction) // per_token
    max_len = config.max_model_len or model.max_position_embeddings
    useful_tokens = config.max_running_requests * max_len
    tokens = max(min(budget_tokens, useful_tokens), config.page_size)
    return -(-tokens // config.page_size)


def max_model_len(config: EngineConfig, model: ModelConfig, num_pages: int) -> int:
    """The model's positions, or the pool if smaller; an explicit larger value is refused."""
    asked, positions = config.max_model_len, model.max_position_embeddings
    pool_tokens = num_pages * config.page_size
    if asked is not None and asked > positions:
        raise ValueError(
            f"max_model_len must be <= the model's max_position_embeddings ({positions}), "
            f"got {asked}"
        )
    if asked is not None and asked > pool_tokens:
        raise ValueError(
            f"max_model_len must be <= the KV pool's {pool_tokens} tokens, got {asked}; "
            "raise max_total_tokens (or mem_fraction) or lower max_model_len"
        )
    return min(asked or positions, pool_tokens)
