"""Data parallelism: N engine replicas behind SGLang's model gateway (``smg``), one address.

``serve --dp-size N`` runs N ordinary ``serve`` processes on loopback ports, each with its own
model copy, KV pool and radix tree, and ``smg launch --worker-urls ...`` in front of them on
``--port``. The gateway (Rust, the ``router`` extra) picks a replica per request:
``cache_aware`` keeps an approximate radix tree per replica of the text it sent there and routes
a request to the replica whose tree shares the longest prefix with it (unless that replica is
far busier than the others); ``round_robin``, ``power_of_two``, ... ignore the cache.

::

    client ──► smg :port ──┬──► serve :p0  (engine, KV pool, radix tree)
                           └──► serve :p1  (engine, KV pool, radix tree)

The machine is shared, not multiplied: ``num_threads`` (default: the free physical cores) and
``mem_fraction`` are divided between the replicas; an explicit ``max_total_tokens`` is each
replica's own pool. The replicas answer the gateway's probes as SGLang workers
(``worker_api.py``); ``supervisor.py`` starts, watches and stops the processes.

``run_gateway`` is the same gateway in front of workers started elsewhere (other hosts):
``vibe-sgl-lite router --worker-urls ...`` checks that each answers before it starts.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from collections.abc import Callable, Sequence

from vibe_sgl_lite.gateway.supervisor import Child, Supervisor, http_status

ROUTER_POLICIES = (
    "cache_aware",
    "round_robin",
    "power_of_two",
    "random",
    "least_load",
    "prefix_hash",
    "consistent_hashing",
)
"""The gateway's policies that need nothing but the request (its ``manual`` needs a routing
header, ``passthrough`` one worker)."""
API_KEY_ENV = "VIBE_SGL_LITE_API_KEY"
"""Where ``serve`` reads its API key (``server/launch.py``): the replicas get theirs there."""
INSTALL_HINT = "pip install 'vibe-sgl-lite[router]'"
REPLICA_HOST = "127.0.0.1"
READY_TIMEOUT_S = 600.0
"""How long a replica may take to load its model and answer ``/health``."""
GRACE_S = 10.0
"""The gateway's shutdown grace, as ``serve``'s (``server/launch.py``)."""
KILL_AFTER_S = GRACE_S + 5.0
"""SIGKILL for a child still running this long after its SIGTERM: past its own grace."""
HEALTH_CHECK_INTERVAL_S = 5
"""Seconds between the gateway's probes of each worker (its default, 60, would route to a dead
replica for minutes; its retries still move a failed request to another replica at once)."""


def check_gateway_installed(flag: str) -> None:
    if importlib.util.find_spec("smg") is None:
        raise ImportError(f"{flag} needs SGLang's model gateway (smg): {INSTALL_HINT}")


def check_port_free(host: str, port: int, flag: str = "--port") -> None:
    """``OSError`` naming ``flag`` when ``host:port`` cannot be bound now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind((host, port))
    except OSError as exc:
        raise OSError(f"{flag} {port}: cannot listen on {host}:{port} ({exc.strerror})") from None


def free_port(host: str = REPLICA_HOST) -> int:
    """A port free right now, chosen by the kernel."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_dp_size(dp_size: int) -> None:
    if isinstance(dp_size, bool) or not isinstance(dp_size, int) or dp_size < 1:
        raise ValueError(f"--dp-size must be an integer >= 1, got {dp_size!r}")


def replica_threads(total: int, dp_size: int) -> int:
    """Each replica's share of ``total`` threads; ``ValueError`` when there is not one each."""
    if total < dp_size:
        raise ValueError(
            f"--num-threads {total} cannot give each of --dp-size {dp_size} replicas a thread"
        )
    return total // dp_size


def check_worker_urls(urls: Sequence[str]) -> None:
    """``ValueError`` naming ``--worker-urls`` for the first URL not answering ``GET /health``."""
    if not urls:
        raise ValueError("--worker-urls: give at least one worker URL")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--worker-urls: {url!r} is not an http:// URL")
        status = http_status(url.rstrip("/") + "/health", timeout=5.0)
        if status != 200:
            raise ValueError(f"--worker-urls: {url} does not answer GET /health ({status})")


def gateway_command(
    urls: Sequence[str], host: str, port: int, policy: str, api_key: str | None
) -> list[str]:
    """``smg launch`` with our defaults: its metrics on a free loopback port (its default 29000
    would collide between deployments), a shutdown grace like ``serve``'s, quicker probes, no
    warm-up diversion."""
    command = [sys.executable, "-m", "smg", "launch", "--host", host, "--port", str(port)]
    command += ["--worker-urls", *urls, "--policy", policy, "--log-level", "warn"]
    command += ["--prometheus-host", REPLICA_HOST, "--prometheus-port", str(free_port())]
    command += ["--shutdown-grace-period-secs", f"{GRACE_S:g}"]
    command += ["--health-check-interval-secs", str(HEALTH_CHECK_INTERVAL_S)]
    # Its warm-up diverts a share of requests, hits included, to a worker that joined a warm
    # fleet; ours start together, empty, and a diverted hit is a prefix computed twice.
    command += ["--worker-warmup-secs", "0", "--worker-warmup-divert-every", "0"]
    if api_key is not None:
        command += ["--api-key", api_key]
    return command


def _start_gateway(
    supervisor: Supervisor,
    urls: Sequence[str],
    host: str,
    port: int,
    policy: str,
    api_key: str | None,
) -> Child:
    """Start the gateway and wait until it routes to every worker."""
    url = f"http://{REPLICA_HOST if host in ('0.0.0.0', '::') else host}:{port}"
    command = gateway_command(urls, host, port, policy, api_key)
    gateway = supervisor.start("the gateway (smg)", url, command, stage=1)
    supervisor.wait_ready(gateway, "/readiness", READY_TIMEOUT_S)
    print(f"gateway ({policy}) on {url} -> {' '.join(urls)}", file=sys.stderr, flush=True)
    return gateway


def serve_data_parallel(
    replica_command: Callable[[int, int], list[str]],
    *,
    dp_size: int,
    host: str,
    port: int,
    policy: str,
    num_threads: int,
    api_key: str | None = None,
) -> int:
    """Run ``dp_size`` replicas (``replica_command(port, threads)``) and the gateway until
    SIGINT/SIGTERM (0), or until the gateway or every replica has died (1). Checked before
    anything starts: the gateway is installed, ``--port`` is free, every replica has a thread."""
    check_dp_size(dp_size)
    check_gateway_installed("--dp-size")
    check_port_free(host, port)
    threads = replica_threads(num_threads, dp_size)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if api_key is not None:
        env[API_KEY_ENV] = api_key  # not on the command line, where ps shows it
    with Supervisor(KILL_AFTER_S) as supervisor:
        try:
            replicas = []
            for rank in range(dp_size):
                replica_port = free_port()
                url = f"http://{REPLICA_HOST}:{replica_port}"
                command = replica_command(replica_port, threads)
                replicas.append(supervisor.start(f"replica {rank}", url, command, env))
            for replica in replicas:
                supervisor.wait_ready(replica, "/health", READY_TIMEOUT_S)
            urls = [r.url for r in replicas]
            gateway = _start_gateway(supervisor, urls, host, port, policy, api_key)
            # A dead replica is the gateway's to route around; without the gateway or any
            # replica there is nothing left to serve.
            return supervisor.run(lambda live: gateway in live and len(live) > 1)
        except KeyboardInterrupt:
            return 0


def run_gateway(
    worker_urls: Sequence[str], *, host: str, port: int, policy: str, api_key: str | None
) -> int:
    """The gateway alone in front of running workers (``vibe-sgl-lite router``)."""
    check_gateway_installed("router")
    check_port_free(host, port)
    check_worker_urls(worker_urls)
    with Supervisor(KILL_AFTER_S) as supervisor:
        try:
            urls = [u.rstrip("/") for u in worker_urls]
            gateway = _start_gateway(supervisor, urls, host, port, policy, api_key)
            return supervisor.run(lambda live: gateway in live)
        except KeyboardInterrupt:
            return 0
