"""Multi-LoRA serving throughput: many adapters in one batch against the base model alone and
against merging each adapter into the weights and serving its requests separately, same run.

Workload: ``--requests`` (32) requests of ``--prompt-len`` random token ids and
``--new-tokens`` greedy tokens (EOS ignored, prefix cache off), all submitted at once to one
``generate_outputs``, spread round robin over 1, 4 and 8 adapters of rank 8 and 64 targeting
all seven projections. Tokens/s = generated tokens / wall time of that call, the best of
``--repeats`` after a warm-up.

* ``base``: the same 32 requests on the base model, an engine without LoRA (no wrapper runs),
  timed alternately with the multi-LoRA engine, so that the machine's load hits both alike.
* ``multi-LoRA``: one engine (``max_loras_per_batch=8``, ``max_lora_rank=64``), every
  request under its adapter, all in one batch. ``x base`` is its tokens/s over ``base``'s.
* ``merged, one at a time``: for each adapter a model with ``W + scale * B A`` merged in, its
  requests run as one batch; the time is the sum over adapters of the ``generate_outputs``
  calls only (loading each merged model is left out, which favours this schedule).
  ``x merged`` is the multi-LoRA tokens/s over this one's.

Then the swap-in cost: ``LoRAManager`` copying one adapter into a batch slot from its host
cache, and from disk (a host-cache miss), per rank.

    python benchmarks/lora.py                       # hidden 512, 8 layers
    python benchmarks/lora.py --hidden 256 --layers 4 --requests 8   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import common
import torch
from safetensors.torch import load_file, save_file

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.batch.forward_batch import AdapterRef
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.worker import ModelWorker

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def projection_shapes(mc: ModelConfig) -> dict[str, tuple[str, int, int]]:
    """``{checkpoint projection: (block, out, in)}`` of one decoder layer."""
    q, kv, h, n = (
        mc.num_attention_heads * mc.head_dim,
        mc.num_key_value_heads * mc.head_dim,
        mc.hidden_size,
        mc.intermediate_size,
    )
    return {
        "q_proj": ("self_attn", q, h),
        "k_proj": ("self_attn", kv, h),
        "v_proj": ("self_attn", kv, h),
        "o_proj": ("self_attn", h, q),
        "gate_proj": ("mlp", n, h),
        "up_proj": ("mlp", n, h),
        "down_proj": ("mlp", h, n),
    }


def write_adapter(folder: Path, mc: ModelConfig, rank: int, seed: int) -> Path:
    """A random PEFT LoRA folder (PEFT's file names and tensor names), ``lora_alpha = 2 r``."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(mc.num_hidden_layers):
        for proj, (block, out, inp) in projection_shapes(mc).items():
            key = f"base_model.model.model.layers.{layer}.{block}.{proj}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, inp, generator=gen) / inp**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(out, rank, generator=gen) * 0.02
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(TARGETS),
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def write_merged(base: Path, adapter: Path, out: Path) -> Path:
    """``base`` with ``adapter`` merged into its weights: ``W + (alpha / r) B A``."""
    shutil.copytree(base, out)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    scaling = cfg["lora_alpha"] / cfg["r"]
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    for file in out.glob("*.safetensors"):
        weights = load_file(str(file))
        for key, a in lora.items():
            if ".lora_A." in key:
                name = key.removeprefix("base_model.model.").split(".lora_A.")[0] + ".weight"
                b = lora[key.replace(".lora_A.", ".lora_B.")]
                if name in weights:
                    weights[name] = (weights[name].float() + scaling * b @ a).to(
                        weights[name].dtype
                    )
        save_file(weights, str(file), metadata={"format": "pt"})
    return out


def timed(
    runner: ModelRunner, prompts: list[list[int]], params: list[SamplingParams], repeats: int
) -> float:
    """Best wall time of ``generate_outputs(prompts, params)`` after one warm-up."""
    runner.generate_outputs(prompts, params)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        runner.generate_outputs(prompts, params)
        best = min(best, time.perf_counter() - start)
    return best


def swap_cost(
    runner: ModelRunner, adapters: dict[str, Path], repeats: int = 5
) -> tuple[float, float]:
    """Seconds to bring one adapter into a slot: ``(from the host cache, from disk)``."""
    engine = runner.engine
    assert engine is not None and isinstance(engine.executor, ModelWorker)
    manager = engine.executor.lora
    assert manager is not None
    name, path = next(iter(adapters.items()))
    ref = AdapterRef(10_000, str(path))
    host, disk = float("inf"), float("inf")
    for i in range(repeats):
        manager.host.pop(ref.uid, None)
        manager.slot_uid = [None] * manager.num_slots
        start = time.perf_counter()
        manager._swap_in(ref, set())
        disk = min(disk, time.perf_counter() - start)
        manager.slot_uid = [None] * manager.num_slots
        start = time.perf_counter()
        manager._swap_in(ref, set())
        host = min(host, time.perf_counter() - start)
    return host, disk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, hidden=512, layers=8, vocab=4096)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    common.apply_threads(args)
    threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(10, args.vocab, (args.prompt_len,), generator=gen).tolist()
        for _ in range(args.requests)
    ]
    tokens = args.requests * args.new_tokens
    settings = dict(
        dtype=args.dtype,
        enable_prefix_cache=False,
        max_total_tokens=args.requests * (args.prompt_len + args.new_tokens + 32),
        num_threads=threads,
    )

    def params(names: list[str | None]) -> list[SamplingParams]:
        return [
            SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True, lora_name=n)
            for n in names
        ]

    with (
        common.random_qwen3(args, max_positions=1024) as model_dir,
        tempfile.TemporaryDirectory() as tmp,
        ModelRunner(model_dir, **settings) as base_runner,
    ):
        mc = ModelConfig.from_path(model_dir)
        base_params = params([None] * args.requests)
        print(
            f"model: hidden {args.hidden}, {args.layers} layers, {args.dtype}; {args.requests} "
            f"requests x {args.prompt_len} prompt + {args.new_tokens} new tokens; "
            f"{threads} threads; load average before: {os.getloadavg()[0]:.2f}"
        )
        print(
            f"{'rank':>4} {'adapters':>8} {'base tok/s':>10} {'multi-LoRA tok/s':>17} "
            f"{'x base':>7} {'merged 1-by-1 tok/s':>20} {'x merged':>9}"
        )
        swaps = {}
        for rank in args.ranks:
            folders = {
                f"r{rank}-{i}": write_adapter(Path(tmp) / f"r{rank}-{i}", mc, rank, rank * 100 + i)
                for i in range(max(args.adapters))
            }
            names_all = list(folders)
            lora_paths = {n: str(p) for n, p in folders.items()}
            with ModelRunner(
                model_dir,
                lora_paths=lora_paths,
                max_loras_per_batch=8,
                max_lora_rank=64,
                **settings,
            ) as runner:
                multi, base = {}, {}
                for n in args.adapters:
                    names = [names_all[i % n] for i in range(args.requests)]
                    # interleaved, so that a change in the machine's load hits both alike
                    best_base = best_multi = float("inf")
                    for _ in range(args.repeats):
                        best_base = min(best_base, timed(base_runner, prompts, base_params, 1))
                        best_multi = min(best_multi, timed(runner, prompts, params(names), 1))
                    base[n], multi[n] = tokens / best_base, tokens / best_multi
                swaps[rank] = swap_cost(runner, folders)
            for n in args.adapters:
                merged_time = 0.0
                for i in range(n):
                    mine = [p for j, p in enumerate(prompts) if j % n == i]
                    merged_dir = write_merged(
                        model_dir, folders[names_all[i]], Path(tmp) / f"merged-{rank}-{n}-{i}"
                    )
                    with ModelRunner(merged_dir, **settings) as merged:
                        merged_time += timed(merged, mine, params([None] * len(mine)), args.repeats)
                    shutil.rmtree(merged_dir)
                merged_tps = tokens / merged_time
                print(
                    f"{rank:>4} {n:>8} {base[n]:>10.1f} {multi[n]:>17.1f} "
                    f"{multi[n] / base[n]:>7.2f} {merged_tps:>20.1f} {multi[n] / merged_tps:>9.2f}"
                )
        print()
        for rank, (host, disk) in swaps.items():
            print(
                f"swap-in, rank {rank}: {host * 1e3:.2f} ms from host memory, "
                f"{disk * 1e3:.2f} ms from disk"
            )
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
