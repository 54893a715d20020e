"""Several machines, on loopback: two ``serve`` workers started on their own (one of them with
``--tp-size 2``), then SGLang's gateway as its users start it, ``smg launch --worker-urls ...``;
the official ``openai`` client talks to the gateway. And ``vibe-sgl-lite router``, the same
gateway started through our CLI, dies with its parent even when that parent is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.gateway.conftest import Process, cli, launched, require_gateway, wait_gone
from tests.server.conftest import MODEL, PROMPTS
from vibe_sgl_lite.gateway.data_parallel import free_port

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture(scope="module")
def workers(qwen3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Process]]:
    """Host A: ``serve``; host B: ``serve --tp-size 2``; each on a port of its own."""
    require_gateway()
    tmp = tmp_path_factory.mktemp("hosts")
    base = cli("serve", "--model", str(qwen3_dir), "--served-model-name", MODEL, "--port", "{port}")
    base += ["--max-total-tokens", "4096"]
    with ExitStack() as stack:
        started = [
            stack.enter_context(launched([*base, "--num-threads", "1"], tmp, "host-a")),
            stack.enter_context(
                launched([*base, "--tp-size", "2", "--num-threads", "2"], tmp, "host-b")
            ),
        ]
        for worker in started:
            worker.wait_answering("/health")
        yield started


def served(worker: Process) -> int:
    """Requests the worker's engine has taken in."""
    with urllib.request.urlopen(worker.base_url + "/server_info", timeout=10) as response:
        return int(json.load(response)["internal_states"][0]["num_requests"])


def test_smg_launch_in_front_of_separate_workers(workers: list[Process], tmp_path: Path) -> None:
    urls = [w.base_url for w in workers]
    command = [sys.executable, "-m", "smg", "launch", "--port", "{port}", "--host", "127.0.0.1"]
    command += ["--worker-urls", *urls, "--policy", "round_robin", "--log-level", "warn"]
    command += ["--prometheus-port", str(free_port())]  # its default, 29000, may be taken
    with launched(command, tmp_path, "smg") as gateway:
        gateway.wait_answering("/readiness")
        with urllib.request.urlopen(gateway.base_url + "/workers", timeout=10) as response:
            listed = json.load(response)["workers"]
        assert sorted(w["url"] for w in listed) == sorted(urls)
        assert all(w["runtime_type"] == "sglang" for w in listed)
        before = [served(w) for w in workers]
        client = gateway.client()
        direct = [w.client() for w in workers]
        for prompt in PROMPTS[:4]:
            out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
            for worker in direct:  # tp 1 and tp 2 answer alike: greedy, same weights
                want = worker.completions.create(
                    model=MODEL, prompt=prompt, max_tokens=6, temperature=0
                )
                assert out.choices[0].text == want.choices[0].text
        chat = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert chat.choices[0].message.role == "assistant"
        after = [served(w) for w in workers]
        # 4 direct requests each, and round_robin's share of the 5 through the gateway
        assert all(a - b >= 4 + 2 for a, b in zip(after, before)), (before, after)


def test_router_dies_with_its_parent(workers: list[Process], tmp_path: Path) -> None:
    command = cli("router", "--port", "{port}", "--worker-urls", *[w.base_url for w in workers])
    with launched(command, tmp_path, "router") as router:
        router.wait_answering("/readiness")
        out = router.client().completions.create(model=MODEL, prompt="ROMEO:", max_tokens=3)
        assert out.usage is not None and out.usage.completion_tokens == 3
        (gateway,) = router.children()
        os.kill(router.proc.pid, signal.SIGKILL)  # no handler runs: the kernel tells the child
        router.proc.wait()
        assert wait_gone([gateway], 30) == []
    assert all(w.proc.poll() is None for w in workers)  # the workers are not the router's
