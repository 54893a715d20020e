"""Two replicas behind SGLang's gateway: start ``serve --dp-size 2``, send requests that share a
system prompt through the official ``openai`` client, see which replica cached it, stop.

python examples/data_parallel.py                 # the bundled model; needs the router extra
python examples/data_parallel.py --policy round_robin
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import openai

SYSTEM = "You are a tutor of Shakespeare. Answer in the voice of the Globe's players.\n" * 4


def get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", default="cache_aware")
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "vibe_sgl_lite", "serve", "--dp-size", "2"]
    command += ["--router-policy", args.policy, "--port", str(port), "--num-threads", "2"]
    serve = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:  # the gateway answers /readiness once it routes to both replicas
            assert serve.poll() is None, "serve --dp-size 2 exited; is smg installed?"
            try:
                get(base + "/readiness")
                break
            except OSError:
                time.sleep(0.5)
        client = openai.OpenAI(base_url=base + "/v1", api_key="none")
        for question in ("Who is Romeo?", "Who is Juliet?", "Who is Tybalt?"):
            out = client.completions.create(
                model="tiny-shakespeare", prompt=SYSTEM + question, max_tokens=12, temperature=0
            )
            print(repr(out.choices[0].text))
        workers = get(base + "/workers")["workers"]  # type: ignore[index]
        for worker in sorted(workers, key=lambda w: w["url"]):
            info = get(worker["url"] + "/server_info")["internal_states"][0]  # type: ignore[index]
            print(
                f"{worker['runtime_type']} worker: {info['num_requests']} requests, "
                f"{info['num_cached_tokens']} prompt tokens from its prefix cache"
            )
    finally:
        serve.send_signal(signal.SIGTERM)
        print("serve exited with", serve.wait(60))


if __name__ == "__main__":
    main()
