"""Attention backends: the same greedy tokens from every implementation of paged attention.

python examples/attention_backends.py                 # the bundled tiny-shakespeare model
TRITON_INTERPRET=1 python examples/attention_backends.py --backends cpu_paged triton

"cpu_paged" decodes straight out of the KV pages (the CPU default), "torch_native" gathers each
request's pages and calls SDPA, "triton" runs the GPU kernels (on a CPU only through triton's
interpreter: exact, and slow). A backend can also be any object: here a subclass of the
reference that counts the rows it decoded.
"""

from __future__ import annotations

import argparse
import time

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.batch import ForwardBatch
from vibe_sgl_lite.kernels import TorchPagedAttention

PROMPTS = ["ROMEO:", "JULIET: O Romeo, Romeo,", "HAMLET: To be, or not to be"]


class CountingAttention(TorchPagedAttention):
    """The reference backend, plus a count of decode rows (prepare runs once per step)."""

    decoded = 0

    def prepare(self, batch: ForwardBatch) -> None:
        super().prepare(batch)
        assert self.metadata is not None
        self.decoded += len(self.metadata.decode_rows_cpu)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="HF folder; default: the bundled model")
    parser.add_argument("--backends", nargs="+", default=["cpu_paged", "torch_native"])
    args = parser.parse_args()
    greedy = SamplingParams(max_tokens=32, temperature=0)
    outputs: dict[str, list[list[int]]] = {}
    counting = CountingAttention()
    for backend in [*args.backends, counting]:  # names, then an object
        name = backend if isinstance(backend, str) else type(backend).__name__
        with ModelRunner(args.model, attention_backend=backend) as runner:
            start = time.perf_counter()
            outputs[name] = [o.token_ids for o in runner.generate_outputs(PROMPTS, greedy)]
            print(f"{name:>18}: {time.perf_counter() - start:6.2f} s")
    first = next(iter(outputs.values()))
    print("identical greedy tokens:", all(tokens == first for tokens in outputs.values()))
    print("decode rows seen by CountingAttention:", counting.decoded)


if __name__ == "__main__":
    main()
