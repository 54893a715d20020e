"""Batched generation throughput: vibe-sgl-lite vs transformers' ``generate``, same run.

Builds a random-weight Qwen3 (default ~30M parameters) in a temporary folder, then generates
``--num-prompts`` completions of ``--output-len`` tokens from prompts of ``--prompt-len``
tokens with each engine (greedy, EOS ignored), and prints tokens/s and the ratio.

    python benchmarks/throughput.py --threads 1 --num-prompts 32

The measuring lives in the package (``vibe_sgl_lite/cli/bench.py``), so that an installed
``vibe-sgl-lite bench`` runs the same code; this script is that command, with the same flags
(``--model DIR`` and the engine settings included).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # vibe_sgl_lite, uninstalled

from vibe_sgl_lite.cli import main  # noqa: E402  (after the path above)

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
