"""``serve --dp-size`` and ``router``'s checks, all before any process starts: each bad input is
one line naming the flag, exit status 2, and nothing left running. And ``flags_of``, which
hands ``serve``'s settings to the replicas, gives the parser back the same settings."""

from __future__ import annotations

import dataclasses
import importlib.util
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vibe_sgl_lite.cli import build_parser, main
from vibe_sgl_lite.cli.flags import flags_of, values_of
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.gateway import data_parallel
from vibe_sgl_lite.gateway.data_parallel import (
    check_worker_urls,
    free_port,
    gateway_command,
    replica_threads,
)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_flags_of_round_trips_through_the_parser() -> None:
    config = EngineConfig(
        page_size=8,
        max_total_tokens=2048,
        enable_prefix_cache=False,
        mem_fraction=0.15,
        schedule_policy="lpm",
        num_threads=3,
    )
    argv = flags_of(config)
    assert "--no-enable-prefix-cache" in argv and "--dtype" not in argv  # defaults stay out
    parser, engine_dests, _ = build_parser()
    parsed = parser.parse_args(["serve", *argv])
    assert EngineConfig(**values_of(parsed, engine_dests)) == config


def test_flags_of_refuses_a_none_that_no_flag_spells() -> None:
    @dataclasses.dataclass
    class Settings:
        page_size: int | None = 16

    with pytest.raises(ValueError, match="page_size=None"):
        flags_of(Settings(page_size=None))


def test_threads_are_divided_not_multiplied() -> None:
    assert replica_threads(8, 2) == 4 and replica_threads(5, 2) == 2
    with pytest.raises(ValueError, match="--num-threads 1 cannot give each of --dp-size 2"):
        replica_threads(1, 2)


@pytest.mark.parametrize("size", ["0", "-1"])
def test_dp_size_below_one(capsys: pytest.CaptureFixture[str], size: str) -> None:
    assert "--dp-size must be an integer >= 1" in error_line(capsys, ["serve", "--dp-size", size])


@pytest.mark.parametrize("dp_size", ["1", "2"])
def test_port_in_use(capsys: pytest.CaptureFixture[str], busy_port: int, dp_size: str) -> None:
    argv = ["serve", "--dp-size", dp_size, "--port", str(busy_port)]
    assert f"--port {busy_port}: cannot listen" in error_line(capsys, argv)


def test_missing_model_is_one_error_not_one_per_replica(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["serve", "--dp-size", "2", "--port", str(free_port()), "--model", str(tmp_path / "x")]
    assert "--model" in error_line(capsys, argv)


def test_router_port_in_use(capsys: pytest.CaptureFixture[str], busy_port: int) -> None:
    argv = ["router", "--worker-urls", "http://127.0.0.1:1", "--port", str(busy_port)]
    assert f"--port {busy_port}" in error_line(capsys, argv)


def test_worker_url_that_does_not_answer(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    argv = ["router", "--worker-urls", dead, "--port", str(free_port())]
    err = error_line(capsys, argv)
    assert f"--worker-urls: {dead} does not answer GET /health" in err
    with pytest.raises(ValueError, match="not an http:// URL"):
        check_worker_urls(["127.0.0.1:8000"])


def test_missing_gateway_says_how_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        data_parallel.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "smg" else real(name, *a),
    )
    err = error_line(capsys, ["serve", "--dp-size", "2", "--port", str(free_port())])
    assert "pip install 'vibe-sgl-lite[router]'" in err and "--dp-size" in err


def test_unknown_policy_is_refused_by_the_parser() -> None:
    run = [sys.executable, "-m", "vibe_sgl_lite", "serve", "--dp-size", "2"]
    result = subprocess.run(
        [*run, "--router-policy", "fastest"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "--router-policy" in result.stderr
    assert result.stderr.count("\n") == 1


def test_gateway_command_names_the_policy_and_workers() -> None:
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    command = gateway_command(urls, "0.0.0.0", 30000, "round_robin", api_key=None)
    assert command[1:4] == ["-m", "smg", "launch"]
    assert command[command.index("--worker-urls") + 1 :][:2] == urls
    assert command[command.index("--policy") + 1] == "round_robin"
    assert "--api-key" not in command
