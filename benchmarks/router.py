"""Data parallel behind SGLang's gateway: cache-aware routing against round robin and against
one replica, on a shared-prefix workload (issue 22).

The workload: ``--prefixes`` long system prompts (``--prefix-tokens`` each, consecutive
passages of the bundled model's held-out Shakespeare), each shared by many users; a request is
one system prompt, chosen uniformly, and a short user turn of random words, sent at Poisson
arrivals (``--rate`` per second, ``--requests`` in all, fixed ``--seed``), streamed, greedy,
``--max-tokens`` tokens with ``ignore_eos``. The same requests, at the same instants, go to:

* ``serve --dp-size 2 --router-policy cache_aware``
* ``serve --dp-size 2 --router-policy round_robin``
* ``serve`` (one replica) with the same threads and twice one replica's KV pool

each started fresh (empty caches) with ``--threads`` threads in all and ``--max-total-tokens``
per replica: size it so that one replica cannot hold every prefix (the default, 2048 tokens,
holds six of the eight 300-token prefixes: cache_aware may place them 6 and 2) while the single
replica's twice-as-large pool holds them all. Per deployment: the prefix-cache hit rate (prompt tokens found in the
cache over prompt tokens looked up, summed over the replicas' ``vllm:prefix_cache_*`` counters
on ``/metrics``), request throughput and TTFT p50/p99; then the ratios.

    python benchmarks/router.py --plot docs/images/router.png

Needs the ``router`` extra (``smg``) and the ``bench`` extra (``openai``, ``matplotlib``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import common  # noqa: F401  (the repository root on sys.path)
import openai
from serving import percentile
from tokenizers import Tokenizer

from vibe_sgl_lite.gateway.data_parallel import free_port
from vibe_sgl_lite.gateway.supervisor import http_status

ASSET = Path(common.__file__).resolve().parent.parent / "vibe_sgl_lite/assets/tiny-shakespeare"
MODEL = "tiny-shakespeare"
WORDS = "what say you of the king his daughter love war night sword crown tell me more".split()


@dataclass
class Deployment:
    """One configuration: its label and ``serve``'s flags beyond the shared ones."""

    label: str
    flags: list[str]


@dataclass
class Outcome:
    label: str
    hit_rate: float
    throughput: float
    ttft_p50: float
    ttft_p99: float
    failed: int


def workload(args: argparse.Namespace) -> list[tuple[float, str]]:
    """``(send at seconds, prompt)`` per request: a system prompt and a user turn."""
    tokenizer = Tokenizer.from_file(str(ASSET / "tokenizer.json"))
    ids = tokenizer.encode((ASSET / "heldout.txt").read_text()).ids
    n = args.prefix_tokens
    prefixes = [tokenizer.decode(ids[i * n : (i + 1) * n]) for i in range(args.prefixes)]
    rng = random.Random(args.seed)
    at, out = 0.0, []
    for _ in range(args.requests):
        user = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        out.append((at, f"{rng.choice(prefixes)}\nUSER: {user}\nANSWER:"))
        at += rng.expovariate(args.rate)
    return out


async def one(client: openai.AsyncOpenAI, prompt: str, max_tokens: int) -> float | None:
    """TTFT in seconds, or None when the request failed."""
    start = time.perf_counter()
    try:
        stream = await client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        first = None
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - start
        return first
    except openai.APIError:
        return None


async def drive(base_url: str, requests: list[tuple[float, str]], max_tokens: int) -> tuple:
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0)
    start = time.perf_counter()

    async def at(t: float, prompt: str) -> float | None:
        await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
        return await one(client, prompt, max_tokens)

    ttfts = await asyncio.gather(*(at(t, p) for t, p in requests))
    elapsed = time.perf_counter() - start
    await client.close()
    return list(ttfts), elapsed


def counters(url: str) -> tuple[float, float]:
    """``(prefix-cache hits, queries)`` in tokens from a replica's ``/metrics``."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    return total("vllm:prefix_cache_hits_total"), total("vllm:prefix_cache_queries_total")


def replica_urls(base_url: str, gateway: bool) -> list[str]:
    if not gateway:
        return [base_url]
    with urllib.request.urlopen(base_url + "/workers", timeout=10) as response:
        return [w["url"] for w in json.load(response)["workers"]]


def run(deployment: Deployment, args: argparse.Namespace, requests: list) -> Outcome:
    port = free_port()
    command = [sys.executable, "-m", "vibe_sgl_lite", "serve", "--port", str(port)]
    command += ["--num-threads", str(args.threads), *deployment.flags]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    gateway = "--dp-size" in deployment.flags
    try:
        deadline = time.monotonic() + 300
        while http_status(base_url + ("/readiness" if gateway else "/health")) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{deployment.label} did not start: {' '.join(command)}")
            time.sleep(0.5)
        urls = replica_urls(base_url, gateway)
        before = [counters(u) for u in urls]
        ttfts, elapsed = asyncio.run(drive(base_url, requests, args.max_tokens))
        after = [counters(u) for u in urls]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    hits = sum(a[0] - b[0] for a, b in zip(after, before))
    queries = sum(a[1] - b[1] for a, b in zip(after, before))
    done = [t for t in ttfts if t is not None]
    return Outcome(
        deployment.label,
        hits / queries if queries else 0.0,
        len(done) / elapsed,
        percentile(done, 50),
        percentile(done, 99),
        len(ttfts) - len(done),
    )


def plot(outcomes: list[Outcome], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        " ".join(o.label.split()[2:]) + "\n" + " ".join(o.label.split()[:2]) for o in outcomes
    ]
    colors = ["tab:green", "tab:red", "tab:gray"][: len(outcomes)]
    panels = (
        ("prefix-cache hit rate (%)", [o.hit_rate * 100 for o in outcomes]),
        ("TTFT p50 (ms)", [o.ttft_p50 * 1e3 for o in outcomes]),
        ("TTFT p99 (ms)", [o.ttft_p99 * 1e3 for o in outcomes]),
        ("throughput (req/s)", [o.throughput for o in outcomes]),
    )
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
    for ax, (name, values) in zip(axes, panels):
        bars = ax.bar(labels, values, color=colors)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_ylim(0, max(values) * 1.15)
        ax.set_title(name, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prefixes", type=int, default=8, help="distinct system prompts")
    p.add_argument("--prefix-tokens", type=int, default=300, help="tokens of each system prompt")
    p.add_argument("--requests", type=int, default=150)
    p.add_argument("--rate", type=float, default=6.0, help="Poisson arrivals per second")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--max-total-tokens", type=int, default=2048, help="KV pool of one replica")
    p.add_argument("--threads", type=int, default=2, help="threads in all, per deployment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="write the bars to this PNG")
    args = p.parse_args()
    pool = str(args.max_total_tokens)
    deployments = [
        Deployment(
            "2 replicas cache_aware",
            ["--dp-size", "2", "--router-policy", "cache_aware", "--max-total-tokens", pool],
        ),
        Deployment(
            "2 replicas round_robin",
            ["--dp-size", "2", "--router-policy", "round_robin", "--max-total-tokens", pool],
        ),
        Deployment("1 replica", ["--max-total-tokens", str(2 * args.max_total_tokens)]),
    ]
    requests = workload(args)
    load = os.getloadavg()[0]
    print(
        f"{args.requests} requests at {args.rate:g}/s; {args.prefixes} prefixes x "
        f"{args.prefix_tokens} tokens; {args.max_tokens} output tokens; {args.threads} threads "
        f"per deployment; KV pool {args.max_total_tokens} tokens per replica "
        f"(the single replica {2 * args.max_total_tokens}); load average {load:.2f}"
    )
    print(f"{'deployment':<24} {'hit rate':>8} {'req/s':>6} {'TTFT p50':>9} {'TTFT p99':>9} fails")
    outcomes = []
    for deployment in deployments:
        o = run(deployment, args, requests)
        outcomes.append(o)
        print(
            f"{o.label:<24} {o.hit_rate * 100:7.1f}% {o.throughput:6.2f} "
            f"{o.ttft_p50 * 1e3:7.1f}ms {o.ttft_p99 * 1e3:7.1f}ms {o.failed:5d}",
            flush=True,
        )
    aware, robin, single = outcomes
    print(
        f"cache_aware vs 1 replica: hit rate {(aware.hit_rate - single.hit_rate) * 100:+.1f} "
        f"points; cache_aware vs round_robin: TTFT p50 x{aware.ttft_p50 / robin.ttft_p50:.2f}, "
        f"p99 x{aware.ttft_p99 / robin.ttft_p99:.2f}, hit rate "
        f"{(aware.hit_rate - robin.hit_rate) * 100:+.1f} points; load average now "
        f"{os.getloadavg()[0]:.2f}"
    )
    if args.plot:
        title = (
            f"{args.prefixes} shared prefixes x {args.prefix_tokens} tokens, {args.requests} "
            f"requests at {args.rate:g}/s, {args.threads} threads, KV pool "
            f"{args.max_total_tokens} tokens per replica"
        )
        plot(outcomes, args.plot, title)


if __name__ == "__main__":
    main()
