"""Generate, stream and inspect one request.

python examples/quickstart.py                 # the bundled tiny-shakespeare model
python examples/quickstart.py --model DIR     # any supported Hugging Face folder
"""

from __future__ import annotations

import argparse

from vibe_sgl_lite import ModelRunner, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    with ModelRunner(args.model) as runner:
        print(runner.generate("ROMEO:", max_tokens=40, temperature=0.7, seed=1))
        for piece in runner.generate_stream("JULIET:", max_tokens=40, temperature=0):
            print(piece, end="", flush=True)
        print()
        out = runner.generate_outputs("HAMLET:", SamplingParams(max_tokens=8, logprobs=2))[0]
        print(out.finish_reason, out.token_ids, out.logprobs[0] if out.logprobs else None)
        print(runner.get_stats())


if __name__ == "__main__":
    main()
