"""``serve --dp-size 2`` end to end: two replicas behind SGLang's gateway answer as one server,
token for token what one engine answers; a replica killed with SIGKILL is reported and the
other keeps serving; SIGTERM stops everything with status 0 and leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from tests.gateway.conftest import cli, launched, require_gateway, wait_gone
from tests.server.conftest import MODEL, PROMPTS, tiny_runner

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_dp2_serves_survives_a_dead_replica_and_stops_clean(
    qwen3_dir: Path, tmp_path: Path
) -> None:
    require_gateway()
    command = cli("serve", "--model", str(qwen3_dir), "--served-model-name", MODEL)
    command += ["--dp-size", "2", "--port", "{port}", "--max-total-tokens", "4096"]
    command += ["--num-threads", "2"]
    with tiny_runner(qwen3_dir) as reference:
        want = [reference.generate(p, temperature=0, max_tokens=8) for p in PROMPTS[:4]]
    with launched(command, tmp_path, "dp") as dp:
        dp.wait_answering("/readiness")
        with urllib.request.urlopen(dp.base_url + "/workers", timeout=10) as response:
            workers = json.load(response)["workers"]
        assert len(workers) == 2
        assert all(w["runtime_type"] == "sglang" and w["is_healthy"] for w in workers)
        client = dp.client()
        for prompt, text in zip(PROMPTS[:4], want):
            out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
            assert out.choices[0].text == text

        children = dp.children()
        replicas = [p for p in children if b"serve" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(children) == 3 and len(replicas) == 2  # and the gateway
        os.kill(replicas[0], signal.SIGKILL)
        assert wait_gone([replicas[0]], 10) == []
        for i in range(6):  # the gateway retries a failed attempt on the live replica
            out = client.completions.create(model=MODEL, prompt=f"request {i}", max_tokens=4)
            assert out.choices[0].finish_reason == "length"
        deadline = time.monotonic() + 20  # the supervisor polls its children every 0.2 s
        while "exited with status -9" not in dp.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "exited with status -9" in dp.output()

        dp.proc.send_signal(signal.SIGTERM)
        assert dp.proc.wait(60) == 0, dp.output()[-3000:]
        assert wait_gone(children, 10) == []
        assert "Traceback" not in dp.output()
