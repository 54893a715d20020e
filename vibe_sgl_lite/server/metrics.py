"""``GET /metrics``: the server's Prometheus metrics, in a registry of its own.

Two kinds of figure, fed two ways:

    counters, histograms   what finished requests did   ``observe(output)``, an ``EngineLoop``
                                                         ``on_finished`` listener (engine thread;
                                                         prometheus-client's metrics are
                                                         thread-safe)
    gauges                 what the engine holds now    read from ``EngineLoop.get_stats()`` when
                                                         Prometheus scrapes (``EngineGauges``)

Each app gets its own ``CollectorRegistry``: the global default one would make a second app in
the same process (tests, two models) fail with "Duplicated timeseries". ``/metrics`` is not
behind the API key, as in vLLM: a scraper carries no key, and the figures are counts, never
prompts or text.

Every figure a gateway or autoscaler reads is also exported under vLLM's name, with its
``model_name`` label (``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc``,
``vllm:prompt_tokens_total``, ... ``vllm:e2e_request_latency_seconds``): the Kubernetes Gateway
API inference extension reads those. ``vllm:inter_token_latency_seconds`` gets each request's
mean gap once per gap (the engine keeps no per-token clock), so its sum and count are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vibe_sgl_lite.core.output import GenerationOutput
from vibe_sgl_lite.server.engine_loop import kv_usage

# Seconds. The bundled model answers in milliseconds on a CPU, a large one in seconds on a GPU:
# the buckets span both.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

StatsSource = Callable[[], Mapping[str, float] | None]
"""The engine's stats snapshot, or None before the app's lifespan has started the engine loop."""


class EngineGauges(Collector):
    """The engine's current state, read at scrape time.

    A gauge set after each step would need the engine thread to know about Prometheus; reading
    the stats snapshot ``EngineLoop`` already publishes keeps the engine unaware of it.
    """

    def __init__(self, stats: StatsSource, model_name: str = "") -> None:
        self.stats = stats
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        if stats is None:  # scraped before the engine loop started: no gauges yet
            return
        total, free = stats["kv_pages_total"], stats["kv_pages_free"]
        gauges = {
            "vibe_running_requests": (
                "Requests in the running batch.",
                stats["num_running_requests"],
            ),
            "vibe_waiting_requests": (
                "Requests waiting to be scheduled.",
                stats["num_waiting_requests"],
            ),
            "vibe_kv_pages_used": ("KV pages held by requests or the prefix cache.", total - free),
            "vibe_kv_pages_free": ("KV pages on the free list.", free),
            "vibe_prefix_cache_hit_rate": (
                "Share of admitted prompt tokens served by the prefix cache.",
                stats["cache_hit_rate"],
            ),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=float(value))
        vllm = {
            "vllm:num_requests_running": gauges["vibe_running_requests"],
            "vllm:num_requests_waiting": gauges["vibe_waiting_requests"],
            "vllm:kv_cache_usage_perc": (
                "KV-cache usage: 1 means requests hold every page (cached pages no request "
                "holds count as free, as in vLLM).",
                kv_usage(stats),
            ),
        }
        for name, (doc, value) in vllm.items():
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self.model_name], float(value))
            yield family
        if "spec_num_verify_rows" in stats:  # speculative decoding, under vLLM's names
            spec = {
                "vllm:spec_decode_num_drafts": ("Verify rows run.", "spec_num_verify_rows"),
                "vllm:spec_decode_num_draft_tokens": (
                    "Draft tokens proposed.",
                    "spec_num_draft_tokens",
                ),
                "vllm:spec_decode_num_accepted_tokens": (
                    "Draft tokens accepted.",
                    "spec_num_accepted_tokens",
                ),
            }
            for name, (doc, key) in spec.items():
                counter = CounterMetricFamily(name, doc, labels=["model_name"])
                counter.add_metric([self.model_name], float(stats[key]))
                yield counter


class ServerMetrics:
    """One app's metrics: ``observe`` each finished request, ``render`` for a scrape."""

    def __init__(self, stats: StatsSource, model_name: str = "") -> None:
        self.registry = CollectorRegistry()
        self.vllm = VllmMetrics(self.registry, model_name)
        self.requests = Counter(
            "vibe_requests",
            "Finished requests, by finish reason.",
            ["finish_reason"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "vibe_prompt_tokens", "Prompt tokens of finished requests.", registry=self.registry
        )
        self.generation_tokens = Counter(
            "vibe_generation_tokens",
            "Tokens generated by finished requests.",
            registry=self.registry,
        )
        self.ttft = Histogram(
            "vibe_time_to_first_token_seconds",
            "Arrival to first generated token.",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.tpot = Histogram(
            "vibe_time_per_output_token_seconds",
            "Mean time between generated tokens, per request of two tokens or more.",
            buckets=TPOT_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "vibe_e2e_request_latency_seconds",
            "Arrival to last token.",
            buckets=E2E_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(EngineGauges(stats, model_name))

    def observe(self, output: GenerationOutput) -> None:
        """``on_finished`` listener: runs in the engine thread, so it only adds numbers."""
        self.vllm.observe(output)
        self.requests.labels(finish_reason=str(output.finish_reason)).inc()
        self.prompt_tokens.inc(len(output.prompt_token_ids))
        self.generation_tokens.inc(len(output.token_ids))
        ttft = output.metrics.get("time_to_first_token")
        if ttft is None:  # no token was generated: no latency to speak of
            return
        self.ttft.observe(ttft)
        tpot = output.metrics.get("time_per_output_token")
        if tpot is not None:
            self.tpot.observe(tpot)
        # Request.metrics() gives TPOT = (finish - first token) / (n - 1), so this is finish -
        # arrival; a one-token request finishes in the step that made its first token.
        self.e2e.observe(ttft + (tpot or 0.0) * max(len(output.token_ids) - 1, 0))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric, gauges read now."""
        return generate_latest(self.registry)


class VllmMetrics:
    """The finished requests' counters and histograms under vLLM's names, one ``model_name``."""

    def __init__(self, registry: CollectorRegistry, model_name: str) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["model_name"], registry=registry).labels(model_name)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            metric = Histogram(name, doc, ["model_name"], buckets=buckets, registry=registry)
            return metric.labels(model_name)

        self.prompt_tokens = counter("vllm:prompt_tokens", "Prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Generation tokens processed.")
        self.cache_queries = counter(
            "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self.cache_hits = counter("vllm:prefix_cache_hits", "Prompt tokens found in the cache.")
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Time between generated tokens.", TPOT_BUCKETS
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency.", E2E_BUCKETS
        )

    def observe(self, output: GenerationOutput) -> None:
        prompt = len(output.prompt_token_ids)
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(len(output.token_ids))
        self.cache_queries.inc(prompt)
        self.cache_hits.inc(min(output.num_cached_tokens, prompt))
        ttft = output.metrics.get("time_to_first_token")
        if ttft is None:
            return
        self.ttft.observe(ttft)
        tpot = output.metrics.get("time_per_output_token")
        gaps = max(len(output.token_ids) - 1, 0)
        if tpot is not None:
            for _ in range(gaps):  # the mean gap, once per gap: sum and count stay exact
                self.itl.observe(tpot)
        self.e2e.observe(ttft + (tpot or 0.0) * gaps)
