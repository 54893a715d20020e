"""Offline throughput: vibe-sgl-lite vs transformers (static and continuous batching), same run.

Builds a random-weight Qwen3 (``--shape small``: ~100M parameters, Qwen3's 151936-token
vocabulary; ``--shape qwen3-0.6b``: Qwen3-0.6B's sizes) in a temporary folder, then runs
``--num-prompts`` requests with prompt lengths uniform in [32, 512] and output lengths uniform in
[32, 256] (greedy, EOS ignored, each request its own ``max_tokens``) through every engine, and
prints each one's output tokens/s, our ratio against it, and how many of its greedy outputs
equal transformers ``generate``'s. ``--equal-lengths`` is the earlier benchmark (every prompt
``--prompt-len`` tokens, every output ``--output-len``, one ``generate`` batch).

    python benchmarks/throughput.py --threads 1 --num-prompts 32
    python benchmarks/throughput.py --threads 1 --num-prompts 32 --equal-lengths

The measuring lives in the package (``vibe_sgl_lite/bench/``, whose modules explain each
column), so that an installed ``vibe-sgl-lite bench`` runs the same code; this script is that
command, with the same flags (``--model DIR|FILE.gguf``, ``--gguf`` and the engine settings
included).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # vibe_sgl_lite, uninstalled

from vibe_sgl_lite.cli import main  # noqa: E402  (after the path above)

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
