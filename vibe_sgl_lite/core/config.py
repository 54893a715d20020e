"""``EngineConfig``: every engine knob, validated once, with SGLang/vLLM names."""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULE_POLICIES = ("fcfs", "lpm", "dfs-weight", "priority", "random")


@dataclass
class EngineConfig:
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    page_size: int = 16
    max_total_tokens: int | None = None  # KV pool size in tokens; None = from free memory
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192  # prefill tokens per step (decode tokens are extra)
    chunked_prefill_size: int | None = None  # longest prefill chunk; None = no chunking
    max_model_len: int | None = None  # prompt + output limit; None = model's max positions
    schedule_policy: str = "fcfs"
    enable_prefix_cache: bool = True
    attention_backend: str = "torch"
    kv_cache_dtype: str = "auto"  # "auto" = the model dtype
    mem_fraction: float = 0.3  # share of free memory for the KV pool when max_total_tokens=None
    tp_size: int = 1
    ep_size: int = 1

    def __post_init__(self) -> None:
        def positive(name: str, value: int | None, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

        positive("page_size", self.page_size)
        positive("max_total_tokens", self.max_total_tokens, allow_none=True)
        positive("max_running_requests", self.max_running_requests)
        positive("max_prefill_tokens", self.max_prefill_tokens)
        positive("chunked_prefill_size", self.chunked_prefill_size, allow_none=True)
        positive("max_model_len", self.max_model_len, allow_none=True)
        positive("tp_size", self.tp_size)
        positive("ep_size", self.ep_size)
        if self.schedule_policy not in SCHEDULE_POLICIES:
            raise ValueError(
                f"schedule_policy must be one of {', '.join(SCHEDULE_POLICIES)}, "
                f"got {self.schedule_policy!r}"
            )
        if self.kv_cache_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(
                "kv_cache_dtype must be one of auto, float32, bfloat16, float16, "
                f"got {self.kv_cache_dtype!r}"
            )
        if not 0.0 < self.mem_fraction <= 0.95:
            raise ValueError(f"mem_fraction must be in (0, 0.95], got {self.mem_fraction}")
        if self.max_total_tokens is not None and self.max_total_tokens < self.page_size:
            raise ValueError(
                f"max_total_tokens must be >= page_size ({self.page_size}), "
                f"got {self.max_total_tokens}"
            )
