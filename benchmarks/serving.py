"""Online serving: Poisson arrivals against a live server, TTFT / TPOT percentiles per rate.

Starts ``vibe-sgl-lite``'s server in this process (uvicorn in a thread, a free port), then for
each request rate sends ``--num-requests`` streamed completions with exponential inter-arrival
times (a Poisson process) through the official ``openai`` client, and prints per rate: the
achieved request throughput, output tokens/s, and p50/p99 of time to first token (TTFT), time
per output token after the first (TPOT) and end-to-end latency. ``--plot FILE.png`` draws
TTFT and TPOT against the rate (needs matplotlib).

The workload is synthetic and documented here (no public trace ships as a package we can
install offline): prompt lengths are log-normal around ``--prompt-len`` words of Shakespeare-like
text, output lengths uniform in ``[--min-output, --max-output]`` tokens with ``ignore_eos``,
fixed ``--seed``.

    python benchmarks/serving.py --rates 1,2,4,8 --num-requests 32
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import threading
import time
from dataclasses import dataclass

import openai
import uvicorn

from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.server import create_app

WORDS = (
    "the king queen lord lady love death night day sweet fair good noble heart soul world "
    "heaven earth blood sword crown honour grace time life tongue eyes hand father son"
).split()


@dataclass
class Result:
    ttft: float
    tpot: float | None
    latency: float
    output_tokens: int


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def workload(n: int, prompt_len: int, lo: int, hi: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = max(4, int(rng.lognormvariate(0, 0.5) * prompt_len))
        out.append((" ".join(rng.choice(WORDS) for _ in range(words)), rng.randint(lo, hi)))
    return out


async def one_request(
    client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int
) -> Result:
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    stream = await client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0.8,
        extra_body={"ignore_eos": True},  # an engine field beyond OpenAI's
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    first = first if first is not None else end
    tpot = (end - first) / (tokens - 1) if tokens > 1 else None
    return Result(first - start, tpot, end - start, tokens)


async def run_rate(
    base_url: str, model: str, rate: float, requests: list[tuple[str, int]], seed: int
) -> tuple[list[Result], float]:
    rng = random.Random(seed)
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
    tasks = []
    start = time.perf_counter()
    for prompt, max_tokens in requests:
        tasks.append(asyncio.create_task(one_request(client, model, prompt, max_tokens)))
        await asyncio.sleep(rng.expovariate(rate))
    results = await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    await client.close()
    return list(results), elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    p.add_argument("--rates", default="1,2,4,8", help="request rates (req/s), comma-separated")
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=24, help="median prompt length in words")
    p.add_argument("--min-output", type=int, default=16)
    p.add_argument("--max-output", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-total-tokens", type=int, default=32768)
    p.add_argument("--plot", default=None, help="write TTFT/TPOT vs rate to this PNG")
    args = p.parse_args()

    runner = ModelRunner(args.model, max_total_tokens=args.max_total_tokens)
    name = runner.model_path.name
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(runner, name), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base_url = f"http://127.0.0.1:{port}/v1"
    requests = workload(
        args.num_requests, args.prompt_len, args.min_output, args.max_output, args.seed
    )
    print(
        f"model {name}; {args.num_requests} requests per rate; outputs "
        f"{args.min_output}-{args.max_output} tokens; prompts ~{args.prompt_len} words"
    )
    header = (
        f"{'rate':>6} {'req/s':>7} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'TPOT p50':>9} {'TPOT p99':>9} {'E2E p50':>8}"
    )
    print(header)
    rows = []
    try:
        for rate in [float(r) for r in args.rates.split(",")]:
            results, elapsed = asyncio.run(run_rate(base_url, name, rate, requests, args.seed))
            ttft = [r.ttft for r in results]
            tpot = [r.tpot for r in results if r.tpot is not None]
            e2e = [r.latency for r in results]
            tokens = sum(r.output_tokens for r in results)
            row = (rate, len(results) / elapsed, tokens / elapsed, ttft, tpot, e2e)
            rows.append(row)
            print(
                f"{rate:6.1f} {row[1]:7.2f} {row[2]:8.1f} "
                f"{percentile(ttft, 50) * 1e3:7.0f}ms {percentile(ttft, 99) * 1e3:7.0f}ms "
                f"{percentile(tpot, 50) * 1e3:7.1f}ms {percentile(tpot, 99) * 1e3:7.1f}ms "
                f"{statistics.median(e2e):7.2f}s"
            )
    finally:
        server.should_exit = True
        thread.join()
        runner.close()
    if args.plot:
        plot(rows, args.plot)


def plot(
    rows: list[tuple[float, float, float, list[float], list[float], list[float]]], path: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r[0] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for q, style in ((50, "o-"), (99, "s--")):
        left.plot(rates, [percentile(r[3], q) * 1e3 for r in rows], style, label=f"p{q}")
        right.plot(rates, [percentile(r[4], q) * 1e3 for r in rows], style, label=f"p{q}")
    left.set(xlabel="request rate (req/s)", ylabel="TTFT (ms)", title="time to first token")
    right.set(xlabel="request rate (req/s)", ylabel="TPOT (ms)", title="time per output token")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
