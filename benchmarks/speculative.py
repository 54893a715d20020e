"""Speculative decoding: tokens/s with speculation on against off, same run, same model.

For each proposer, on an input-grounded workload (the answer copies much of the prompt: a
held-out passage to be repeated) and on free text, at batch 1, 4 and 16, it prints tokens/s
off and on, their ratio, the mean accepted length (tokens per verify row) and whether the
greedy tokens are identical (they must be). Then the curve that says when speculation pays:
the time of one forward over a row of 1..16 tokens, and of a batch of B such rows, against a
1-token decode at the same context.

    ngram   on the real SmolLM2-135M-Instruct (scripts/fetch_test_gguf.py) when its file is
            there, and on the bundled model
    draft   on the bundled model, with its own first two layers as the draft model (a
            smaller model sharing the tokenizer, made here: layer-skip self-drafting)
    eagle   on the bundled model with its shipped head (vibe_sgl_lite/assets/*-eagle)

    python benchmarks/speculative.py --threads 1
    python benchmarks/speculative.py --threads 1 --batches 1 --max-tokens 96
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import common  # noqa: F401  (puts the repository on sys.path)
import torch
from decode_step import MachineLimits
from safetensors.torch import load_file, save_file

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.core.runner import default_model_path

ROOT = Path(__file__).resolve().parent.parent
GGUF = ROOT / "scripts" / "_cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"
HELDOUT = default_model_path() / "heldout.txt"


def passages(count: int, chars: int) -> list[str]:
    """``count`` held-out passages (never trained on) of about ``chars`` characters."""
    text = HELDOUT.read_text()
    step = len(text) // (count + 1)
    return [text[i * step : i * step + chars] for i in range(1, count + 1)]


def workloads(model: str, count: int) -> dict[str, list[str]]:
    """Prompts per workload: ``grounded`` (repeat a passage; the answer copies the prompt)
    and ``free`` (open continuation)."""
    texts = passages(count, 500)
    if model == "smollm2":
        grounded = [
            f"<|im_start|>user\nRepeat this text exactly:\n\n{t}<|im_end|>\n<|im_start|>assistant\n"
            for t in texts
        ]
        topics = ["a robot", "the sea", "a city at night", "an old tree", "winter", "a train"]
        free = [
            f"<|im_start|>user\nWrite a short story about {topics[i % len(topics)]}.<|im_end|>\n"
            f"<|im_start|>assistant\n"
            for i in range(count)
        ]
    else:
        grounded = [f"{t}\n\n{t[:120]}" for t in texts]  # the passage, then its start again
        speakers = ["ROMEO:", "JULIET:", "KING:", "HAMLET:", "OLIVIA:", "VIOLA:"]
        free = [speakers[i % len(speakers)] for i in range(count)]
    return {"grounded": grounded, "free": free}


@contextmanager
def first_layers_draft(model: Path, layers: int) -> Iterator[Path]:
    """The model cut to its first ``layers`` layers (same embedding, norm and LM head)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for f in model.iterdir():
            if f.is_file() and f.name not in ("model.safetensors", "config.json"):
                shutil.copy(f, out / f.name)
        config = json.loads((model / "config.json").read_text())
        config["num_hidden_layers"] = layers
        config["layer_types"] = config.get("layer_types", [])[:layers] or None
        (out / "config.json").write_text(json.dumps(config))
        keep = {
            k: v
            for k, v in load_file(str(model / "model.safetensors")).items()
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers
        }
        save_file(keep, str(out / "model.safetensors"))
        yield out


def run(
    runner: ModelRunner, prompts: list[str], batch: int, max_tokens: int
) -> tuple[float, list[list[int]]]:
    """Seconds and tokens of ``prompts`` submitted ``batch`` at a time (greedy)."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    tokens: list[list[int]] = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        outs = runner.generate_outputs(prompts[i : i + batch], params, use_tqdm=False)
        tokens += [o.token_ids for o in outs]
    return time.perf_counter() - start, tokens


def compare(
    model: Path, name: str, algorithm: str, extra: dict[str, Any], args: argparse.Namespace
) -> list[str]:
    lines = []
    settings = dict(num_threads=args.threads, max_model_len=1024)
    with (
        ModelRunner(model, **settings) as off,
        ModelRunner(model, speculative_algorithm=algorithm, **settings, **extra) as on,
    ):
        for workload, prompts in workloads(name, max(args.batches)).items():
            for batch in args.batches:
                chosen = prompts[: max(batch, 2)]
                run(off, chosen[:1], 1, 8)  # warm-up: kernels, allocator, caches
                run(on, chosen[:1], 1, 8)
                before = on.get_stats()
                t_off = t_on = float("inf")
                for _ in range(args.repeats):  # alternated, best of: load only ever slows
                    for runner in (off, on):
                        assert runner.engine is not None
                        runner.engine.cache.evict(10**9)  # every repeat prefills again
                    seconds, ref = run(off, chosen, batch, args.max_tokens)
                    t_off = min(t_off, seconds)
                    seconds, got = run(on, chosen, batch, args.max_tokens)
                    t_on = min(t_on, seconds)
                after = on.get_stats()
                rows = after["spec_num_verify_rows"] - before["spec_num_verify_rows"]
                accepted = after["spec_num_accepted_tokens"] - before["spec_num_accepted_tokens"]
                length = (accepted + rows) / rows if rows else 1.0
                n = sum(len(t) for t in ref)
                lines.append(
                    f"{name:8} {algorithm:6} {workload:9} batch {batch:2}: off {n / t_off:7.1f} "
                    f"tok/s, on {n / t_on:7.1f} tok/s, {t_off / t_on:5.2f}x, mean accepted "
                    f"length {length:4.2f}, identical {got == ref}"
                )
                print(lines[-1], flush=True)
    return lines


def verify_cost(model: Path, threads: int, context: int = 256) -> list[str]:
    """Forward seconds of one row of n tokens (n = 1..16), and of B rows of 1 and of 5 tokens,
    at ``context`` tokens of KV, relative to one 1-token decode."""
    with ModelRunner(model, num_threads=threads, max_total_tokens=64 * 512) as runner:
        assert runner.engine is not None
        engine = runner.engine
        page = engine.config.page_size
        pages_per_row = (context + 16) // page + 1

        def seconds(rows: int, tokens: int) -> float:
            tables = [engine.allocator.alloc(pages_per_row) for _ in range(rows)]
            batch = [
                BatchRow(list(range(1, tokens + 1)), context, t, True, False, -1, tokens)
                for t in tables
            ]
            times = []
            for _ in range(7):
                start = time.perf_counter()
                engine.executor.execute(batch)
                times.append(time.perf_counter() - start)
            for t in tables:
                engine.allocator.free(t)
            return statistics.median(times[2:])

        base = seconds(1, 1)
        lines = [
            f"verify cost at context {context} ({model.name}), one 1-token decode = {base * 1e3:.2f} ms:"
        ]
        lines.append(
            "  one row of n tokens: "
            + ", ".join(f"n={n} {seconds(1, n) / base:.2f}x" for n in (1, 2, 3, 5, 8, 12, 16))
        )
        for b in (1, 2, 4, 8, 16, 32):
            plain, spec = seconds(b, 1), seconds(b, 5)
            lines.append(
                f"  batch {b:2}: {b} decodes {plain / base:5.2f}x, {b} verify rows of 5 tokens {spec / base:5.2f}x (ratio {spec / plain:.2f})"
            )
    for line in lines:
        print(line, flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs; best kept")
    parser.add_argument("--algorithms", nargs="+", default=["ngram", "draft", "eagle"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("\n".join(MachineLimits.measure("float32").report()), flush=True)
    bundled = default_model_path()
    verify_cost(bundled, args.threads)
    if "ngram" in args.algorithms:
        if GGUF.exists():
            compare(GGUF, "smollm2", "ngram", {}, args)
        else:
            print(f"(no {GGUF.name}: python scripts/fetch_test_gguf.py for the SmolLM2 rows)")
        compare(bundled, "bundled", "ngram", {}, args)
    if "draft" in args.algorithms:
        with first_layers_draft(bundled, 2) as draft:
            compare(bundled, "bundled", "draft", {"speculative_draft_model_path": str(draft)}, args)
    if "eagle" in args.algorithms:
        if (bundled.parent / f"{bundled.name}-eagle" / "config.json").exists():
            compare(bundled, "bundled", "eagle", {}, args)
        else:
            print("(no shipped EAGLE head next to the bundled model)")


if __name__ == "__main__":
    main()
