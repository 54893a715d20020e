"""Two pipeline stages: the same greedy text as one process, and how long the stages waited.

python examples/pipeline_parallel.py              # the bundled model, pp_size=2
python examples/pipeline_parallel.py --model DIR  # any supported Hugging Face folder
"""

from __future__ import annotations

import argparse

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.distributed.pipeline_parallel import bubble_share

PROMPTS = ["ROMEO:", "JULIET:", "HAMLET: To be", "KING LEAR:"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    greedy = SamplingParams(temperature=0, max_tokens=24)
    with ModelRunner(args.model, max_total_tokens=4096) as one:
        expected = [o.text for o in one.generate_outputs(PROMPTS, greedy)]
    with ModelRunner(args.model, max_total_tokens=4096, pp_size=2) as runner:  # 2 layers each
        texts = [o.text for o in runner.generate_outputs(PROMPTS, greedy)]
        timeline = runner.engine.executor.take_timeline()  # type: ignore[attr-defined]
    print(texts[0])
    print(f"identical to one process: {texts == expected}")
    print(f"bubble share of a step: {bubble_share(timeline):.0%}")


if __name__ == "__main__":
    main()
