"""Many clients at once, and clients that leave: every stream gets its own right text, and a
client that goes away frees its KV pages without waiting for its ``max_tokens``."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

from tests.server.conftest import MODEL, PROMPTS, LiveServer
from vibe_sgl_lite import ModelRunner

LONG = {"max_tokens": 1000, "extra_body": {"ignore_eos": True}}  # seconds of work if not aborted


def test_32_concurrent_streams(server: LiveServer, reference: ModelRunner) -> None:
    """Half completions, half chat, all streamed at once: each joined stream equals the greedy
    text ``ModelRunner`` computes for its prompt alone."""
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} {i}" for i in range(32)]
    want = [
        (
            reference.generate(p, temperature=0, max_tokens=16)
            if i % 2 == 0
            else reference.chat([{"role": "user", "content": p}], temperature=0, max_tokens=16)
        )
        for i, p in enumerate(prompts)
    ]

    async def one(client: Any, i: int, prompt: str) -> tuple[str, str | None]:
        text, finish = "", None
        if i % 2 == 0:
            stream = await client.completions.create(
                model=MODEL, prompt=prompt, temperature=0, max_tokens=16, stream=True
            )
            async for chunk in stream:
                text += chunk.choices[0].text
                finish = chunk.choices[0].finish_reason or finish
        else:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": prompt}],
                temperature=0,
                max_tokens=16,
                stream=True,
            )
            async for chunk in stream:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def all_of_them() -> list[tuple[str, str | None]]:
        async with server.async_client() as client:
            return await asyncio.gather(*(one(client, i, p) for i, p in enumerate(prompts)))

    before = server.idle_stats()["num_requests"]
    results = asyncio.run(asyncio.wait_for(all_of_them(), timeout=120))
    assert [text for text, _ in results] == want
    assert all(finish in ("stop", "length") for _, finish in results)
    stats = server.idle_stats()
    assert stats["num_requests"] - before == 32


def flushed_stats(server: LiveServer) -> dict[str, Any]:
    """Stats with the prefix cache emptied, once nothing runs: every page not held by a request
    is then free."""
    server.idle_stats()
    server.loop.call(lambda engine: engine.cache.flush()).result(10)
    stats = server.loop.call(lambda engine: engine.get_stats()).result(10)
    open_streams = server.loop.call(lambda engine: engine.outputs.num_open_streams).result(10)
    assert open_streams == 0 and not server.loop.live
    return stats


def test_disconnected_streams_free_their_pages(server: LiveServer) -> None:
    idle = flushed_stats(server)
    assert idle["kv_pages_free"] == idle["kv_pages_total"]

    async def open_and_leave(client: Any, i: int) -> str:
        if i % 2 == 0:
            stream = await client.completions.create(
                model=MODEL, prompt=PROMPTS[i], stream=True, **LONG
            )
        else:
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPTS[i]}], stream=True, **LONG
            )
        async for chunk in stream:
            break
        await stream.close()  # closes the connection: the server sees the client go away
        return str(chunk.id)

    async def eight() -> list[str]:
        async with server.async_client() as client:
            return await asyncio.gather(*(open_and_leave(client, i) for i in range(8)))

    ids = asyncio.run(asyncio.wait_for(eight(), timeout=60))
    assert len(set(ids)) == 8
    after = flushed_stats(server)
    assert after["num_requests"] - idle["num_requests"] == 8
    generated = after["num_generated_tokens"] - idle["num_generated_tokens"]
    assert generated < 8 * 1000 // 2, "the streams ran on after their clients left"
    assert after["kv_pages_free"] == idle["kv_pages_free"]


def test_disconnected_non_streamed_request_is_aborted(server: LiveServer) -> None:
    """A non-streamed request whose client hangs up stops long before its ``max_tokens``."""
    for path, fields in (
        ("/v1/completions", {"prompt": PROMPTS[0]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPTS[0]}]}),
    ):
        idle = flushed_stats(server)
        payload = json.dumps({"model": MODEL, "max_tokens": 1000, "ignore_eos": True, **fields})
        with socket.create_connection((server.host, server.port), timeout=30) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n{payload}".encode()
            )
            deadline = time.monotonic() + 30
            while server.loop.get_stats()["num_generated_tokens"] == idle["num_generated_tokens"]:
                assert time.monotonic() < deadline, "the request never started"
                time.sleep(0.005)
        after = flushed_stats(server)
        generated = after["num_generated_tokens"] - idle["num_generated_tokens"]
        assert 0 < generated < 1000, f"{path}: ran to max_tokens after its client left"
        assert after["kv_pages_free"] == idle["kv_pages_free"]
