"""Decode graphs on the bundled model: the same greedy text, without Python between the ops.

    python examples/decode_graph.py

Generates one continuation eagerly, then with ``enable_torch_compile=True``: the first decode
step compiles the batch-size-1 graph with inductor (seconds, once; inductor caches it on disk),
every later one replays it. Prints both speeds, the compile time and whether the texts are
identical (they must be).
"""

from __future__ import annotations

import time

from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.models.worker import ModelWorker


def main() -> None:
    prompt, settings = "ROMEO:\n", dict(num_threads=1, enable_prefix_cache=False)
    texts = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        with ModelRunner(enable_torch_compile=compile_, **settings) as runner:  # type: ignore[arg-type]
            runner.generate(prompt, max_tokens=8, temperature=0)  # warm-up (compiles)
            start = time.perf_counter()
            texts[name] = runner.generate(prompt, max_tokens=128, temperature=0, ignore_eos=True)
            print(f"{name}: {128 / (time.perf_counter() - start):.0f} tokens/s")
            worker = runner.engine.executor
            if isinstance(worker, ModelWorker) and worker.graphs is not None:
                seconds = worker.graphs.capture_seconds
                print(f"compiled batch sizes {sorted(seconds)} in {sum(seconds.values()):.1f} s")
    print(f"identical text: {texts['eager'] == texts['compiled']}")


if __name__ == "__main__":
    main()
