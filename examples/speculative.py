"""Speculative decoding on the bundled model: the same greedy text, fewer forward passes.

    python examples/speculative.py

Runs one prompt (a held-out passage, then its first line again) without speculation, then with
n-gram lookup and with the EAGLE head shipped for this model, and prints the tokens per target
forward, the share of drafts accepted and whether the text is identical (it must be). This
4-layer model rarely copies its input, so its n-gram drafts mostly fail and the request soon
stops speculating; its EAGLE head guesses most tokens.
"""

from __future__ import annotations

from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.core.runner import default_model_path


def main() -> None:
    passage = (default_model_path() / "heldout.txt").read_text()[3000:3400]
    prompt = f"{passage}\n\n{passage[:80]}"
    settings = dict(num_threads=1, max_model_len=1024)
    with ModelRunner(**settings) as plain:
        expected = plain.generate(prompt, max_tokens=64, temperature=0)
        steps = plain.get_stats()["num_steps"]
    print(f"no speculation: {64 / steps:.2f} tokens per target forward")
    for algorithm in ("ngram", "eagle"):
        with ModelRunner(speculative_algorithm=algorithm, **settings) as runner:  # type: ignore[arg-type]
            text = runner.generate(prompt, max_tokens=64, temperature=0)
            stats = runner.get_stats()
        print(
            f"{algorithm}: {64 / stats['num_steps']:.2f} tokens per target forward, "
            f"{stats['spec_acceptance_rate']:.0%} of drafts accepted, "
            f"identical text: {text == expected}"
        )


if __name__ == "__main__":
    main()
