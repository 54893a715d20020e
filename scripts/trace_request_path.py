"""Print the package files one request passes through at run time, in the order it meets them.

    python scripts/trace_request_path.py                 # default settings, the bundled model
    python scripts/trace_request_path.py --max-tokens 8 --prompt "Once upon a time"

The runner is built first (loading is not the request's path); then every Python function call
made while ``ModelRunner.generate(prompt, max_tokens=N)`` runs is traced with
``sys.setprofile``, and each ``vibe_sgl_lite`` file is listed once, at its first call.
``docs/request_lifecycle.md`` lists the same files and says what each does; a change that makes
the list longer makes the core harder to read, and this script shows it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import vibe_sgl_lite
from vibe_sgl_lite import ModelRunner

PACKAGE = Path(vibe_sgl_lite.__file__).resolve().parent


def request_path(prompt: str, max_tokens: int, **settings: Any) -> list[str]:
    """Package files (relative to the package) called during one ``generate``, in order."""
    seen: dict[str, None] = {}

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event != "call":
            return
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(PACKAGE):
            seen.setdefault(str(path.relative_to(PACKAGE)), None)

    with ModelRunner(**settings) as runner:
        runner.generate(prompt, max_tokens=max_tokens)  # warm: first-call imports and builds
        sys.setprofile(profile)
        try:
            runner.generate(prompt, max_tokens=max_tokens)
        finally:
            sys.setprofile(None)
    return list(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    files = request_path(args.prompt, args.max_tokens)
    for i, name in enumerate(files, 1):
        print(f"{i:2d}  {name}")
    print(f"{len(files)} files")


if __name__ == "__main__":
    main()
