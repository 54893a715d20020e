"""Latency under load: TTFT and TPOT percentiles at several Poisson request rates, measured on
the server's own request path (``EngineLoop``) in this process, without HTTP.

The request path. The server runs one ``EngineLoop`` (``server/engine_loop.py``): the engine
steps in its own thread, and each HTTP handler, on the asyncio event loop, calls
``loop.submit(prompt, params)`` and reads its request's ``Delta`` events, one per engine step
that produced tokens for it. This script is such a handler minus the HTTP: each simulated
client submits at its arrival time, awaits admission, then iterates ``handle.events()`` and
timestamps every token as the event carrying it reaches the event loop. So the numbers include
the engine's queueing and scheduling, continuous batching with the other requests, the
thread hops between the engine and the event loop, and the GIL they share, but not JSON,
sockets or a client library (``benchmarks/serving.py`` measures the same thing through HTTP and
the ``openai`` client).

The workload (fixed ``--seed``): ``--num-requests`` requests per rate (default 20), prompts of
random token ids with lengths uniform in ``--prompt-len MIN MAX`` (default 32-512), outputs
uniform in ``--output-len MIN MAX`` (default 32-128) tokens with EOS ignored, ``--temperature``
0.8 (sampled, as in ``benchmarks/serving.py``; 0 is greedy). Arrivals are a Poisson process:
exponential gaps of mean ``1 / rate``, one seeded draw of unit-mean gaps scaled per rate, so
every rate replays the same requests in the same order, only faster. The prefix cache (on, as
in the server) is flushed before each rate, so no rate reuses another's prompts.

Per rate it prints the achieved throughput (requests and output tokens per second, from the
first request sent to the last token received), TTFT (time to first token: from sending the
request to receiving its first token) and TPOT (time per output token after the first: from
the first token to the last, over the tokens after the first, one value per request), each at
p50 and p99 over the requests (nearest rank: with 20 requests p99 is the slowest one). Past the
engine's capacity the queue grows for as long as requests keep arriving, so there TTFT grows
with ``--num-requests``: compare rates at equal counts.

The model is a random-weight Qwen3 like ``decode_step.py``'s ``small`` shape (hidden 512, heads
8/4 of 64, FFN 1536, vocab 151936) with 4 layers instead of 8, to keep the default run under
three minutes on two cores; every shape field has a flag (``--layers 8`` for the full shape).
With a 151936-token vocabulary, decode time goes mostly to the LM head and, when sampling, to
the sampler's per-row noise over the whole vocabulary; fewer layers change little of that.

    python benchmarks/latency.py --threads 1
    python benchmarks/latency.py --threads 1 --rates 0.25 0.5 1 --num-requests 64 --layers 8
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import common
import decode_step
import torch

from vibe_sgl_lite.core.engine import Engine
from vibe_sgl_lite.core.runner import ModelRunner
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.server.engine_loop import EngineLoop

TEMPERATURE = 0.8  # sampled, as most served requests are (and as in benchmarks/serving.py)
MAX_POSITIONS = 4096
LAYERS = 4  # the small shape's 8 halved: see the module docstring

# ---- the workload ----------------------------------------------------------------------------


@dataclass
class WorkItem:
    """One request: its prompt, how many tokens it asks for, when it is sent at rate 1."""

    prompt: list[int]
    output_len: int
    arrival: float  # seconds after the first request, at 1 request/s; divided by the rate


def workload(
    num_requests: int,
    prompt_len: tuple[int, int],
    output_len: tuple[int, int],
    vocab: int,
    seed: int,
) -> list[WorkItem]:
    """Seeded random prompts and lengths, and Poisson arrival times at unit rate."""
    rng = random.Random(seed)
    items, arrival = [], 0.0
    for _ in range(num_requests):
        prompt = [rng.randrange(1, vocab) for _ in range(rng.randint(*prompt_len))]
        items.append(WorkItem(prompt, rng.randint(*output_len), arrival))
        arrival += rng.expovariate(1.0)
    return items


# ---- measuring -------------------------------------------------------------------------------


@dataclass
class RequestTiming:
    """What one client saw, in seconds from the moment it sent its request."""

    prompt_len: int
    output_tokens: int
    ttft: float  # first token received
    tpot: float | None  # (last token - first token) / (tokens - 1); None for a single token
    latency: float  # last event received


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` % of them at or below."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class RateResult:
    rate: float  # offered, requests/s
    seconds: float  # first request sent to last token received
    requests: list[RequestTiming]

    @property
    def num_requests(self) -> int:
        return len(self.requests)

    @property
    def request_throughput(self) -> float:
        return self.num_requests / self.seconds

    @property
    def token_throughput(self) -> float:
        return sum(r.output_tokens for r in self.requests) / self.seconds

    def ttft(self, q: float) -> float:
        return percentile([r.ttft for r in self.requests], q)

    def tpot(self, q: float) -> float:
        return percentile([r.tpot for r in self.requests if r.tpot is not None], q)


async def one_request(
    loop: EngineLoop, item: WorkItem, send_at: float, temperature: float = TEMPERATURE
) -> RequestTiming:
    """Sleep until ``send_at`` (``perf_counter`` time), submit, timestamp every token received."""
    await asyncio.sleep(max(0.0, send_at - time.perf_counter()))
    params = SamplingParams(temperature=temperature, max_tokens=item.output_len, ignore_eos=True)
    sent = time.perf_counter()
    handle = loop.submit(item.prompt, params)
    refusal = await handle.admitted()
    if refusal is not None:
        raise RuntimeError(f"request refused: {refusal.error}")
    token_times: list[float] = []
    async for delta in handle.events():
        if delta.error is not None:
            raise RuntimeError(f"request failed: {delta.error}")
        now = time.perf_counter()
        token_times += [now] * len(delta.token_ids)  # tokens of one event arrive together
    end = time.perf_counter()
    if not token_times:
        raise RuntimeError("a request finished without producing a token")
    n = len(token_times)
    return RequestTiming(
        prompt_len=len(item.prompt),
        output_tokens=n,
        ttft=token_times[0] - sent,
        tpot=(token_times[-1] - token_times[0]) / (n - 1) if n > 1 else None,
        latency=end - sent,
    )


async def run_rate(
    loop: EngineLoop, items: Sequence[WorkItem], rate: float, temperature: float
) -> RateResult:
    """Every item sent at ``arrival / rate`` after the first; waits for all of them."""
    await asyncio.wrap_future(loop.call(lambda engine: engine.cache.flush()))
    start = time.perf_counter()
    timings = await asyncio.gather(
        *(one_request(loop, item, start + item.arrival / rate, temperature) for item in items)
    )
    return RateResult(rate, time.perf_counter() - start, list(timings))


async def warm_up(loop: EngineLoop, vocab: int) -> int:
    """Two short requests (first-use allocations, kernel builds) before anything is timed;
    returns the engine thread's torch thread count."""
    rng = random.Random(-1)
    await asyncio.gather(
        *(
            one_request(loop, WorkItem([rng.randrange(1, vocab) for _ in range(32)], 4, 0.0), 0)
            for _ in range(2)
        )
    )
    return await asyncio.wrap_future(loop.call(lambda engine: torch.get_num_threads()))


# ---- the whole run ---------------------------------------------------------------------------


@dataclass
class LatencyReport:
    engine_threads: int
    results: list[RateResult]


TABLE_HEADER = (
    f"{'rate':>6} {'requests':>8} {'req/s':>7} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} "
    f"{'TPOT p50':>9} {'TPOT p99':>9}"
)


def format_row(r: RateResult) -> str:
    return (
        f"{r.rate:>6.2f} {r.num_requests:>8} {r.request_throughput:>7.2f} "
        f"{r.token_throughput:>8.1f} {r.ttft(50) * 1e3:>7.0f}ms {r.ttft(99) * 1e3:>7.0f}ms "
        f"{r.tpot(50) * 1e3:>7.1f}ms {r.tpot(99) * 1e3:>7.1f}ms"
    )


async def run_all(
    engine: Engine, items: Sequence[WorkItem], rates: Sequence[float], temperature: float
) -> LatencyReport:
    """One ``EngineLoop`` over ``engine`` for the whole run, as the server keeps one."""
    loop = EngineLoop(engine)
    try:
        threads = await warm_up(loop, engine.model_config.vocab_size)
        print(f"engine thread: {threads} torch thread(s)", flush=True)
        print(TABLE_HEADER, flush=True)
        report = LatencyReport(threads, [])
        for rate in rates:
            result = await run_rate(loop, items, rate, temperature)
            report.results.append(result)
            print(format_row(result), flush=True)
        return report
    finally:
        loop.shutdown()


def main(argv: list[str] | None = None) -> LatencyReport:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--num-requests", type=int, default=20, help="requests per rate")
    parser.add_argument(
        "--prompt-len", type=int, nargs=2, default=[32, 512], metavar=("MIN", "MAX")
    )
    parser.add_argument(
        "--output-len", type=int, nargs=2, default=[32, 128], metavar=("MIN", "MAX")
    )
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="0: greedy")
    parser.add_argument("--seed", type=int, default=0)
    decode_step.add_shape_flags(parser)
    parser.set_defaults(layers=LAYERS)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--max-total-tokens", type=int, default=32768, help="KV pool (tokens)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads; 0: torch's default (all cores)"
    )
    args = parser.parse_args(argv)
    if min(args.rates) <= 0 or args.num_requests < 1:
        parser.error("--rates must be > 0 and --num-requests >= 1")
    for name in ("prompt_len", "output_len"):
        low, high = getattr(args, name)
        if not 1 <= low <= high:
            parser.error(f"--{name.replace('_', '-')}: need 1 <= MIN <= MAX, got {low} {high}")
    if args.prompt_len[1] + args.output_len[1] > MAX_POSITIONS:
        parser.error(f"the longest prompt plus output must fit {MAX_POSITIONS} positions")
    common.apply_threads(args)
    _, shape = decode_step.shape_from_args(args)  # "resized": 4 layers
    items = workload(
        args.num_requests,
        tuple(args.prompt_len),
        tuple(args.output_len),
        shape.vocab,
        args.seed,
    )
    cpu = decode_step.cpu_name()
    print(
        f"cpu: {cpu}, {torch.get_num_threads()} torch thread(s)\n"
        f"model: random Qwen3 ({shape.describe()}), {args.dtype}; "
        f"KV pool {args.max_total_tokens} tokens, prefix cache on (flushed per rate)\n"
        f"workload: {args.num_requests} requests per rate, Poisson arrivals; prompts "
        f"{args.prompt_len[0]}-{args.prompt_len[1]} tokens (mean "
        f"{sum(len(i.prompt) for i in items) / len(items):.0f}), outputs "
        f"{args.output_len[0]}-{args.output_len[1]} (mean "
        f"{sum(i.output_len for i in items) / len(items):.0f}), temperature {args.temperature}, "
        f"seed {args.seed}",
        flush=True,
    )
    start = time.perf_counter()
    settings = dict(dtype=args.dtype, max_total_tokens=args.max_total_tokens)
    with decode_step.random_model(shape, max_positions=MAX_POSITIONS) as model_dir:
        with ModelRunner(model_dir, **settings) as runner:
            assert runner.engine is not None
            report = asyncio.run(run_all(runner.engine, items, args.rates, args.temperature))
    print(f"total {time.perf_counter() - start:.1f} s")
    return report


if __name__ == "__main__":
    main()
