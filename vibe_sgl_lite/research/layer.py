"""``ResearchLayer``: what the research features need from the engine, in one opt-in object.

    engine construction   build_research_layer(...)     None when attention is dense and
                                                        nothing is pruned: nothing below runs
                          layer.attention                the plain backend wrapped by
                                                        ``SparseAttention`` (methods, pruner)
    every step            layer.after_sample(requests)   token pruning: plan, free lone pages
    capture_attention     layer.start_capture(...)       record raw decode scores
    get_stats             layer.stats()                  pruning counters, share of KV read

Token pruning frees a request's own pages, so it touches two things the core owns: the page
allocator (a page goes back only when the request is its only holder: pages the prefix cache or
another request holds keep their K/V, this request just stops reading those tokens) and what
the request may share through the prefix cache (``Request.max_cached_tokens``: its prompt, and
nothing from its first freed page on, since K/V computed while reading a pruned context differ
from dense ones).
"""

from __future__ import annotations

from collections.abc import Sequence

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.kernels.backend import AttentionBackend, PagedAttentionBackend
from vibe_sgl_lite.kernels.sparse import (
    AttentionMethod,
    ScoreCapture,
    TokenPruner,
    make_attention_method,
)
from vibe_sgl_lite.kernels.sparse.backend import SparseAttention
from vibe_sgl_lite.memory.page_allocator import PageAllocator
from vibe_sgl_lite.scheduler import Scheduler
from vibe_sgl_lite.scheduler.request import FREED_PAGE, Request

MethodSpec = str | AttentionMethod | Sequence[str | AttentionMethod]
"""``attention_method=``: a name, an object, or one of those per layer."""

DENSE_STATS: dict[str, float | int] = {
    "num_pruned_tokens": 0,
    "num_pruned_pages_freed": 0,
    "attention_kv_read_fraction": 1.0,
}
"""What ``stats()`` reports for an engine without a research layer."""


class ResearchLayer:
    """The research features of one engine, around its plain attention backend."""

    def __init__(
        self,
        backend: AttentionBackend,
        config: EngineConfig,
        num_layers: int,
        allocator: PageAllocator,
        methods: Sequence[AttentionMethod] = (),
        pruner: TokenPruner | None = None,
        *,
        feature: str = "capture_attention",
    ) -> None:
        if not isinstance(backend, PagedAttentionBackend) or config.world_size > 1:
            raise ValueError(
                f"{feature} needs a PagedAttentionBackend (cpu_paged, torch_native, triton) "
                "and tp_size = ep_size = pp_size = 1"
            )
        self.attention = SparseAttention(backend, methods, pruner)
        self.page_size = config.page_size
        self.num_layers = num_layers
        self.allocator = allocator
        self.num_pruned_tokens = 0
        self.num_pruned_pages_freed = 0

    @property
    def methods(self) -> list[AttentionMethod]:
        return self.attention.methods

    @property
    def pruner(self) -> TokenPruner | None:
        return self.attention.pruner

    @property
    def idle(self) -> bool:
        """Nothing to do: no method, no pruner, no capture (a layer built for a capture alone)."""
        return not self.methods and self.pruner is None and self.attention.capture is None

    # ---- token pruning -----------------------------------------------------------------------

    def release(self, req: Request) -> None:
        """``req`` gave its pages back (finish, abort, preemption): forget its scores."""
        if self.pruner is not None:
            self.pruner.release(req.request_id)
            req.max_cached_tokens = req.num_prompt_tokens

    def after_sample(self, requests: Sequence[Request]) -> None:
        """Drop each decoding request's least-attended tokens; free pages left empty."""
        pruner = self.pruner
        if pruner is None:
            return
        for req in requests:
            length = req.num_computed_tokens
            self.num_pruned_tokens += len(pruner.plan(req.request_id, length, self.page_size))
            for i in pruner.fully_pruned_pages(req.request_id, length, self.page_size):
                page = req.page_table[i]
                if page != FREED_PAGE and self.allocator.refcount(page) == 1:
                    self.allocator.free([page])
                    req.page_table[i] = FREED_PAGE
                    self.num_pruned_pages_freed += 1
            shared = req.num_prompt_tokens
            if FREED_PAGE in req.page_table:
                shared = min(shared, req.page_table.index(FREED_PAGE) * self.page_size)
            req.max_cached_tokens = shared

    # ---- score capture -----------------------------------------------------------------------

    def start_capture(self, layers: Sequence[int] | None = None) -> ScoreCapture:
        """Record raw decode scores of ``layers`` (all when ``None``) from now on."""
        for layer in layers or ():
            if not (isinstance(layer, int) and 0 <= layer < self.num_layers):
                raise ValueError(
                    f"layers: each must be in [0, {self.num_layers - 1}], got {layer!r}"
                )
        capture = ScoreCapture(None if layers is None else frozenset(layers))
        self.attention.capture = capture
        return capture

    def stop_capture(self) -> None:
        self.attention.capture = None

    def stats(self) -> dict[str, float | int]:
        methods = {id(m): m for m in self.methods}.values()
        read, total = sum(m.stats.kv_read for m in methods), sum(m.stats.kv_total for m in methods)
        return {
            "num_pruned_tokens": self.num_pruned_tokens,
            "num_pruned_pages_freed": self.num_pruned_pages_freed,
            "attention_kv_read_fraction": read / total if total else 1.0,
        }


def build_research_layer(
    backend: AttentionBackend,
    config: EngineConfig,
    num_layers: int,
    allocator: PageAllocator,
    scheduler: Scheduler,
    spec: MethodSpec | None = None,
) -> ResearchLayer | None:
    """The engine's research layer from its settings (``spec``: ``attention_method=`` given as
    an object or a per-layer list); ``None`` when attention is dense and nothing is pruned."""
    methods = _methods(config, num_layers, config.attention_method if spec is None else spec)
    if not methods and config.pruning_ratio == 0.0:
        return None
    pruner = None
    if config.pruning_ratio > 0.0:
        pruner = TokenPruner(config.pruning_ratio, config.min_tokens_after_pruning)
    feature = "pruning_ratio > 0" if config.pruning_ratio > 0.0 else "attention_method"
    if any(type(m) is not AttentionMethod for m in methods):
        feature = "attention_method other than 'dense'"
    layer = ResearchLayer(backend, config, num_layers, allocator, methods, pruner, feature=feature)
    scheduler.on_release.append(layer.release)
    return layer


def _methods(config: EngineConfig, num_layers: int, spec: MethodSpec) -> list[AttentionMethod]:
    """One method per layer from a name, an object or a per-layer list; [] when all dense
    (pruning alone reads through dense methods, which count what it reads)."""
    items = [spec] * num_layers if isinstance(spec, (str, AttentionMethod)) else list(spec)
    if len(items) != num_layers:
        raise ValueError(
            f"attention_method: a per-layer list needs {num_layers} entries (one per "
            f"layer), got {len(items)}"
        )
    methods = [_method(config, item) for item in items]
    if all(type(m) is AttentionMethod for m in methods) and config.pruning_ratio == 0:
        return []
    return methods


def _method(config: EngineConfig, item: str | AttentionMethod) -> AttentionMethod:
    if isinstance(item, AttentionMethod):
        return item
    return make_attention_method(
        item,
        num_sink_tokens=config.num_sink_tokens,
        attention_window=config.attention_window,
        budget=config.budget,
        selection_ratio=config.selection_ratio,
    )
