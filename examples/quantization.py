"""Quantised models: W8A8 int8, weight-only int8 and int4 against float32 (docs/performance.md).

python examples/quantization.py                 # the bundled tiny-shakespeare model
python examples/quantization.py --model PATH    # a Hugging Face folder or a .gguf file

For each mode: the perplexity of the model's held-out text (or a fixed sentence for another
model), the greedy continuation of a prompt, and, for W8A8, the check that makes per-row
activation scales worth having: the same prompt decoded alone and inside a batch of other
requests gives the same tokens and the same log-probabilities, bit for bit.
"""

from __future__ import annotations

import argparse

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.core.runner import default_model_path

PROMPT = "ROMEO: What light through yonder window breaks?\n"
OTHERS = ["JULIET:", "HAMLET: To be, or not to be", "KING: Now is the winter of our discontent"]
TEXT = "The cat sat on the mat. Paris is the capital of France, and Berlin that of Germany."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="default: the bundled model")
    args = parser.parse_args()
    text = (default_model_path() / "heldout.txt").read_text()[:4000] if not args.model else TEXT
    greedy = SamplingParams(max_tokens=16, temperature=0, logprobs=3, ignore_eos=True)
    for mode in (None, "int8", "int8_weight_only", "int4"):
        with ModelRunner(args.model, quantization=mode, enable_prefix_cache=False) as runner:
            ids = runner.tokenizer.encode(text)[:500]
            alone = runner.generate_outputs(PROMPT, greedy)[0]
            print(
                f"{mode or 'float32':>16}: perplexity {runner.perplexity(ids):8.3f}  {alone.text!r}"
            )
            if mode == "int8":
                batched = runner.generate_outputs([*OTHERS, PROMPT], greedy)[-1]
                same = batched.token_ids == alone.token_ids and batched.logprobs == alone.logprobs
                print(f"{'':>18}alone and in a batch of {len(OTHERS) + 1}: identical {same}")


if __name__ == "__main__":
    main()
