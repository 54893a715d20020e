"""Tensor parallelism launched by torchrun (one process per rank, any number of machines).

    torchrun --nproc-per-node 2 examples/torchrun_tp.py --model DIR
    # two machines: torchrun --nnodes 2 --nproc-per-node 1 --node-rank R \\
    #     --master-addr HOST --master-port PORT examples/torchrun_tp.py --model DIR

Every rank runs this same script. Rank 0 drives the engine; the other ranks' ``ModelRunner``
constructors serve their shard until rank 0 closes, then return with ``is_driver == False``.
"""

from __future__ import annotations

import argparse

from vibe_sgl_lite import ModelRunner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--tp-size", type=int, default=2)
    args = parser.parse_args()
    runner = ModelRunner(args.model, tp_size=args.tp_size, max_total_tokens=2048)
    if runner.is_driver:
        print(runner.generate("ROMEO:", max_tokens=24, temperature=0))
        runner.close()


if __name__ == "__main__":
    main()
