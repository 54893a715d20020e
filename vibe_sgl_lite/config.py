"""``EngineConfig``: every engine setting, defined once, with SGLang/vLLM names and help text.

This dataclass is the single source of the engine's settings. ``ModelRunner``'s keyword
arguments, the CLI's flags (``--page-size`` for ``page_size``, with the help text below) and the
server's fields are all derived from its fields; adding a setting here adds it everywhere.

It sits near the bottom of the package (below everything but ``utils``), because the scheduler,
the model worker and the distributed executors all read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vibe_sgl_lite.utils.settings import check_fraction, check_int, setting
from vibe_sgl_lite.utils.threads import default_num_threads

if TYPE_CHECKING:  # torch loads with the engine, not with the settings (``--help`` needs none)
    import torch

SCHEDULE_POLICIES = ("fcfs", "lpm", "dfs-weight", "priority", "random")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
"""The ``dtype`` choices; ``DTYPES`` maps each to its ``torch.dtype``."""
KV_CACHE_DTYPES = ("auto", *DTYPE_NAMES, "int8")
ATTENTION_METHODS = ("dense", "streaming", "quest", "topk_oracle")  # kernels/sparse/
QUANTIZATIONS = ("int8", "int8_weight_only", "int4")  # models/quantize.py
WEIGHT_LAYOUTS = ("auto", "row", "column")  # models/weight_layout.py
SPECULATIVE_ALGORITHMS = ("ngram", "draft", "eagle")  # speculative/
MAX_SPECULATIVE_TOKENS = 16
"""The largest ``speculative_num_draft_tokens``: past it a verify row costs a prefill's worth."""
LORA_BACKENDS = ("auto", "torch", "triton")  # kernels/lora.py
MAX_GRAPH_BATCH_SIZE = 512
"""The largest ``torch_compile_max_bs`` / ``cuda_graph_max_bs`` (models/decode_graph.py)."""


@dataclass
class EngineConfig:
    """The engine's settings; validated on construction (``ValueError`` naming the field)."""

    dtype: str = setting("float32", "weights and activations dtype", DTYPE_NAMES)
    device: str = setting("cpu", "torch device: cpu, cuda or cuda:N")
    seed: int = setting(0, "seed of the runner (unseeded sampling derives from it)")
    page_size: int = setting(16, "tokens per KV-cache page")
    max_total_tokens: int | None = setting(
        None, "KV pool size in tokens (default: mem_fraction of free memory)"
    )
    max_running_requests: int = setting(256, "most requests decoding at once")
    max_prefill_tokens: int = setting(8192, "prefill tokens per step (decode tokens are extra)")
    chunked_prefill_size: int | None = setting(
        None, "longest prefill chunk in tokens (default: no chunking)"
    )
    max_model_len: int | None = setting(
        None, "prompt + output limit in tokens (default: the model's max positions)"
    )
    schedule_policy: str = setting("fcfs", "order of the waiting queue", SCHEDULE_POLICIES)
    enable_prefix_cache: bool = setting(True, "share KV pages of common prefixes (radix tree)")
    attention_backend: str = setting(
        "auto",
        "attention implementation: auto (cpu_paged on CPU, triton on CUDA), cpu_paged (C++ "
        "in-place decode), torch_native (gather + SDPA), triton; 'torch' and 'reference' are "
        "the earlier names of cpu_paged and torch_native",
    )
    kv_cache_dtype: str = setting(
        "auto",
        "KV cache dtype ('auto': the model dtype; int8: quantised, about half of bf16's memory)",
        KV_CACHE_DTYPES,
    )
    attention_method: str = setting(
        "dense", "which cached keys decode reads (kernels/sparse/)", ATTENTION_METHODS
    )
    num_sink_tokens: int = setting(4, "streaming: first tokens always read (attention sinks)")
    attention_window: int = setting(256, "streaming: most recent tokens read")
    budget: int | None = setting(
        None,
        "quest: pages read per step; topk_oracle: tokens (default: unset; quest and "
        "topk_oracle need it or selection_ratio)",
    )
    selection_ratio: float | None = setting(
        None, "quest, topk_oracle: share of pages / tokens read, in (0, 1] (default: unset)"
    )
    pruning_ratio: float = setting(
        0.0, "token pruning: share of a long context dropped from reads, in [0, 1)"
    )
    min_tokens_after_pruning: int = setting(256, "token pruning: never prune below this many")
    quantization: str | None = setting(
        None,
        "quantised linear layers: int8 (W8A8: int8 weights per output channel, int8 activations "
        "per row, integer products), int8_weight_only (float activations), or int4 (weights in "
        "groups of 32, float activations; the LM head W8A8 int8) (default: float weights)",
        QUANTIZATIONS,
    )
    weight_layout: str = setting(
        "auto",
        "float linear weights in memory: row ([out, in], the checkpoint's), column ([in, out]; "
        "faster small-batch products on CPU); auto: column for float32 on CPU, else row",
        WEIGHT_LAYOUTS,
    )
    fp32_gemm_max_rows: int | None = setting(
        None,
        "float32 CPU products of at most this many rows run our loop over the column-major "
        "weights (kernels/fp32_gemm.py), the rest torch's (MKL); 0: none (default: every "
        "product where the loop runs AVX-512, up to 8 rows where it runs AVX2, else none)",
    )
    mem_fraction: float = setting(
        0.3, "share of free memory for the KV pool when max_total_tokens is not set"
    )
    num_threads: int | None = setting(
        None,
        "threads of the model's products (with tp/ep/pp_size > 1: in all, shared by the ranks) "
        "(default: $OMP_NUM_THREADS if set, else one per physical core not already busy by the "
        "load average; on a busy machine extra threads wait at every barrier)",
        aliases=("--threads",),
    )
    speculative_algorithm: str | None = setting(
        None,
        "speculative decoding: ngram (prompt lookup), draft (a smaller model) or eagle (an "
        "EAGLE head over the target's hidden states) (default: off)",
        SPECULATIVE_ALGORITHMS,
    )
    speculative_num_draft_tokens: int = setting(
        4,
        f"speculative: tokens proposed per step and verified in one forward (k), 1..{MAX_SPECULATIVE_TOKENS}",
    )
    speculative_draft_model_path: str | None = setting(
        None,
        "speculative: the draft model (draft) or EAGLE head (eagle) folder (default: unset; "
        "eagle on the bundled model uses the head shipped with it)",
    )
    speculative_ngram_min: int = setting(1, "ngram: shortest suffix matched against the context")
    speculative_ngram_max: int = setting(4, "ngram: longest suffix matched (tried first)")
    speculative_disable_batch_size: int | None = setting(
        None,
        "speculative: stop speculating while more requests than this decode at once (verifying "
        "is no longer nearly free) (default: measured per algorithm, see docs/speculative.md)",
    )
    speculative_adaptive: bool = setting(
        True,
        "speculative: per batch size, measure decode tokens/s with and without drafts and let "
        "greedy requests draft only where it is faster (speculative/guard.py)",
    )
    enable_torch_compile: bool = setting(
        False,
        "compile decode steps of up to torch_compile_max_bs rows with torch.compile (inductor), "
        "one graph per batch-size bucket, compiled on its first step (models/decode_graph.py)",
    )
    torch_compile_max_bs: int = setting(
        8, f"enable_torch_compile: the largest batch compiled, 1..{MAX_GRAPH_BATCH_SIZE}"
    )
    enable_cuda_graph: bool = setting(
        False,
        "CUDA: replay decode steps of up to cuda_graph_max_bs rows from captured CUDA graphs",
    )
    cuda_graph_max_bs: int = setting(
        32, f"enable_cuda_graph: the largest batch captured, 1..{MAX_GRAPH_BATCH_SIZE}"
    )
    tp_size: int = setting(1, "tensor-parallel degree (worker processes)")
    ep_size: int = setting(1, "expert-parallel degree (mixture-of-experts models)")
    pp_size: int = setting(
        1,
        "pipeline-parallel degree: the layers split into this many contiguous stages, one per "
        "group of tp_size worker processes, each step's rows pipelined through them in pp_size "
        "micro-batches",
    )
    enable_lora: bool = setting(
        False, "serve LoRA adapters (implied by lora_paths; load_lora adds more at run time)"
    )
    lora_paths: dict[str, str] | None = setting(
        None,
        "PEFT adapter folders to load at start, NAME=PATH ... (a request picks one by "
        "lora_name, or by the server's model field) (default: none)",
        cli_type=str,
        nargs="+",
    )
    max_loras_per_batch: int = setting(8, "LoRA: most distinct adapters in one step (slots)")
    max_lora_rank: int = setting(64, "LoRA: largest adapter rank r accepted")
    max_loaded_loras: int = setting(
        32, "LoRA: adapters each worker keeps in host memory (LRU; the rest re-read when used)"
    )
    lora_backend: str = setting(
        "auto",
        "LoRA segmented product: torch, or triton (auto: triton on CUDA, else torch)",
        LORA_BACKENDS,
    )

    def __post_init__(self) -> None:
        for name in ("page_size", "max_running_requests", "max_prefill_tokens", "seed"):
            check_int(name, getattr(self, name), minimum=0 if name == "seed" else 1)
        for name in ("max_total_tokens", "chunked_prefill_size", "max_model_len", "num_threads"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1, or_none=True)
        check_int("tp_size", self.tp_size, minimum=1)
        check_int("ep_size", self.ep_size, minimum=1)
        check_int("pp_size", self.pp_size, minimum=1)
        self._check_lora()
        check_int("num_sink_tokens", self.num_sink_tokens, minimum=0)
        check_int("min_tokens_after_pruning", self.min_tokens_after_pruning, minimum=1)
        if check_fraction("pruning_ratio", self.pruning_ratio, allow_zero=True) >= 1.0:
            raise ValueError(f"pruning_ratio must be in [0, 1), got {self.pruning_ratio!r}")
        check_int("attention_window", self.attention_window, minimum=1)
        if self.budget is not None:
            check_int("budget", self.budget, minimum=1, or_none=True)
        if self.selection_ratio is not None:
            check_fraction("selection_ratio", self.selection_ratio)
        if self.attention_method == "quest" and self.budget is not None:
            check_int("budget", self.budget, minimum=2)  # first + current page
        if self.attention_method in ("quest", "topk_oracle") and (
            (self.budget is None) == (self.selection_ratio is None)
        ):
            raise ValueError(
                f"attention_method={self.attention_method!r} needs exactly one of "
                "budget or selection_ratio"
            )
        for name in (
            "dtype",
            "schedule_policy",
            "kv_cache_dtype",
            "attention_method",
            "weight_layout",
            "lora_backend",
        ):
            choices = FIELDS[name].metadata["choices"]
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be None or one of {', '.join(QUANTIZATIONS)}, "
                f"got {self.quantization!r}"
            )
        if self.quantization is not None and self.tp_size > 1:
            raise ValueError(
                f"quantization={self.quantization!r} does not support tensor parallelism yet "
                f"(tp_size={self.tp_size}); use tp_size=1"
            )
        if not isinstance(self.enable_prefix_cache, bool):
            raise ValueError(
                f"enable_prefix_cache must be a bool, got {self.enable_prefix_cache!r}"
            )
        if not isinstance(self.attention_backend, str):
            raise ValueError(f"attention_backend must be a string, got {self.attention_backend!r}")
        if isinstance(self.mem_fraction, bool) or not (
            isinstance(self.mem_fraction, (int, float)) and 0.0 < self.mem_fraction <= 0.95
        ):
            raise ValueError(f"mem_fraction must be in (0, 0.95], got {self.mem_fraction!r}")
        if self.max_total_tokens is not None and self.max_total_tokens < self.page_size:
            raise ValueError(
                f"max_total_tokens must be >= page_size ({self.page_size}), "
                f"got {self.max_total_tokens}"
            )
        if self.fp32_gemm_max_rows is not None:
            check_int("fp32_gemm_max_rows", self.fp32_gemm_max_rows, minimum=0, or_none=True)
        self._check_speculative()
        self._check_graphs()
        check_device(self.device)

    def _check_graphs(self) -> None:
        """Decode graphs replay the plain model over the plain attention backend, in this
        process: refuse, by name, what would put something else in the step."""
        for name in ("enable_torch_compile", "enable_cuda_graph"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("torch_compile_max_bs", "cuda_graph_max_bs"):
            check_int(name, getattr(self, name), minimum=1, maximum=MAX_GRAPH_BATCH_SIZE)
        for name in ("enable_torch_compile", "enable_cuda_graph"):
            if not getattr(self, name):
                continue
            if self.world_size > 1:
                raise ValueError(
                    f"{name} does not support tensor/expert/pipeline parallelism yet "
                    f"(tp_size={self.tp_size}, ep_size={self.ep_size}, pp_size={self.pp_size})"
                )
            if self.enable_lora:
                raise ValueError(f"{name} cannot be combined with LoRA adapters yet")
            if self.attention_method != "dense" or self.pruning_ratio > 0:
                raise ValueError(
                    f"{name} cannot be combined with attention_method="
                    f"{self.attention_method!r} / pruning_ratio={self.pruning_ratio}: sparse "
                    "reads are chosen on the host per step"
                )

    def _check_speculative(self) -> None:
        """Speculative settings are checked here, before any model or worker process exists."""
        check_int(
            "speculative_num_draft_tokens",
            self.speculative_num_draft_tokens,
            minimum=1,
            maximum=MAX_SPECULATIVE_TOKENS,
        )
        check_int("speculative_ngram_min", self.speculative_ngram_min, minimum=1)
        check_int("speculative_ngram_max", self.speculative_ngram_max, minimum=1)
        if self.speculative_ngram_max < self.speculative_ngram_min:
            raise ValueError(
                f"speculative_ngram_max ({self.speculative_ngram_max}) must be >= "
                f"speculative_ngram_min ({self.speculative_ngram_min})"
            )
        if self.speculative_disable_batch_size is not None:
            check_int(
                "speculative_disable_batch_size",
                self.speculative_disable_batch_size,
                minimum=1,
                or_none=True,
            )
        algorithm = self.speculative_algorithm
        if algorithm is None:
            return
        if algorithm not in SPECULATIVE_ALGORITHMS:
            raise ValueError(
                f"speculative_algorithm must be None or one of "
                f"{', '.join(SPECULATIVE_ALGORITHMS)}, got {algorithm!r}"
            )
        if algorithm == "draft" and self.speculative_draft_model_path is None:
            raise ValueError(
                "speculative_algorithm='draft' needs speculative_draft_model_path (a smaller "
                "model with the same tokenizer)"
            )
        if algorithm == "eagle" and self.world_size > 1:
            raise ValueError(
                "speculative_algorithm='eagle' does not support tensor/expert/pipeline "
                f"parallelism yet (tp_size={self.tp_size}, ep_size={self.ep_size}, "
                f"pp_size={self.pp_size}): the head reads the target's hidden states in this "
                "process; use ngram or draft, or tp_size = pp_size = 1"
            )
        if self.attention_method != "dense" or self.pruning_ratio > 0:
            raise ValueError(
                f"speculative_algorithm={algorithm!r} cannot be combined with "
                f"attention_method={self.attention_method!r} / pruning_ratio="
                f"{self.pruning_ratio} yet: sparse reads are chosen per decode token, and a "
                "verify row decodes several"
            )

    def _check_lora(self) -> None:
        for name in ("max_loras_per_batch", "max_lora_rank", "max_loaded_loras"):
            check_int(name, getattr(self, name), minimum=1)
        if not isinstance(self.enable_lora, bool):
            raise ValueError(f"enable_lora must be a bool, got {self.enable_lora!r}")
        if self.lora_paths is not None:
            self.lora_paths = parse_lora_paths(self.lora_paths)
            self.enable_lora = True
        if self.max_loaded_loras < self.max_loras_per_batch:
            raise ValueError(
                f"max_loaded_loras must be >= max_loras_per_batch ({self.max_loras_per_batch}), "
                f"got {self.max_loaded_loras}"
            )
        if not self.enable_lora:
            return
        if self.speculative_algorithm is not None:
            raise ValueError(
                f"lora_paths / enable_lora cannot be combined with speculative_algorithm="
                f"{self.speculative_algorithm!r} yet: the draft would propose without the "
                "request's adapter; use one or the other"
            )
        if self.pp_size > 1:
            raise ValueError(
                f"lora_paths / enable_lora does not support pipeline parallelism yet "
                f"(pp_size={self.pp_size}); use pp_size=1 (tp_size > 1 is supported)"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    @property
    def kv_torch_dtype(self) -> torch.dtype:
        if self.kv_cache_dtype == "int8":
            return torch_dtype("int8")  # quantised per token and head, scales beside the pool
        return torch_dtype(self.dtype if self.kv_cache_dtype == "auto" else self.kv_cache_dtype)

    @property
    def threads_per_rank(self) -> int:
        """Intra-op threads of each process that runs the model (``num_threads`` resolved)."""
        total = self.num_threads if self.num_threads is not None else default_num_threads()
        return max(1, total // self.world_size)

    @property
    def world_size(self) -> int:
        """Processes the model runs on: ``pp_size`` stages, each of ``stage_size`` ranks."""
        return self.stage_size * self.pp_size

    @property
    def stage_size(self) -> int:
        """Ranks of one pipeline stage: attention over ``tp_size``, experts over ``ep_size``
        on the same ranks."""
        tp, ep = self.tp_size, self.ep_size
        if ep > 1 and tp > 1 and ep != tp:
            raise ValueError(
                "ep_size must be 1, equal to tp_size, or used with tp_size=1; "
                f"got tp_size={tp}, ep_size={ep}"
            )
        return max(tp, ep)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineConfig:
        """Build from untrusted keyword arguments: an unknown name is a ``ValueError`` too."""
        unknown = sorted(set(kwargs) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown engine setting {unknown[0]!r}; allowed: {', '.join(FIELDS)}")
        return cls(**kwargs)


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(EngineConfig)}


def parse_lora_paths(value: object) -> dict[str, str]:
    """``lora_paths`` as ``{name: folder}``: from a dict, or from ``NAME=PATH`` strings (the
    CLI's ``--lora-paths a=/x b=/y``); a bare ``PATH`` is named after its folder."""
    items: list[tuple[object, object]]
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = []
        for text in value:
            name, sep, path = text.partition("=")
            items.append((name, path) if sep else (text.rstrip("/").rsplit("/", 1)[-1], text))
    else:
        raise ValueError(
            f"lora_paths must be a dict {{name: path}} or a list of 'name=path', got {value!r}"
        )
    paths: dict[str, str] = {}
    for name, path in items:
        if not isinstance(name, str) or not name or not isinstance(path, (str, Path)) or not path:
            raise ValueError(
                f"lora_paths entries must be non-empty name=path strings, got {name!r}: {path!r}"
            )
        if name in paths:
            raise ValueError(f"lora_paths names {name!r} twice")
        paths[name] = str(path)
    return paths


def torch_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` called ``name`` (``"float32"`` -> ``torch.float32``)."""
    import torch

    return getattr(torch, name)  # type: ignore[no-any-return]


def __getattr__(name: str) -> Any:
    """``DTYPES``: ``{name: torch.dtype}`` of ``DTYPE_NAMES``, built when first asked for, so
    that importing the settings does not import torch."""
    if name == "DTYPES":
        return {n: torch_dtype(n) for n in DTYPE_NAMES}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_device(device: str) -> None:
    """Refuse a device this torch cannot use, with the reason, before anything is loaded."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
        raise ValueError(
            f"device {device!r} needs CUDA, but this torch ({torch.__version__}) has {build}; "
            "use device='cpu', or install a CUDA build of torch (see the README)"
        )
