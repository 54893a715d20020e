"""transformers as the baseline: its ``generate`` (the reference) and its continuous batching.

* **transformers generate**: what a user of ``model.generate`` writes: the requests in arrival
  order, in static batches of ``--batch``, left-padded; each batch runs to its longest
  ``max_tokens`` and the outputs are cut to each request's own. It is the reference the others'
  outputs are compared with, token for token.
* **transformers continuous batching**: transformers' own paged, continuously batched engine.
  ``model.generate_batch`` takes a single ``max_new_tokens`` for every request, so it is driven
  through the manager ``generate_batch`` is built on (``continuous_batching_context_manager`` and
  ``add_request(max_new_tokens=...)``, what ``transformers serve`` does), giving each request
  its own limit. Its KV cache holds ``--max-total-tokens`` like ours, capped at what the
  workload can use (every request's prompt and output at once), not sized from free memory: a
  65,536-token float32 cache of the Qwen3-0.6B shape alone is 15 GB. Its tokens per step start
  at ``--max-prefill-tokens`` and are halved (down to ``MIN_CB_BATCH_TOKENS``; the column name
  says so) while its memory estimate, which grows with tokens per step times cache size,
  exceeds the machine's. Skipped, with the reason, when this transformers lacks it or it fails.

Both share one model in memory (``load_transformers_model``), with EOS switched off.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from vibe_sgl_lite.bench.report import Column
from vibe_sgl_lite.bench.shapes import is_gguf
from vibe_sgl_lite.bench.workload import BenchRequest
from vibe_sgl_lite.config import DTYPES, EngineConfig

MIN_CB_BATCH_TOKENS = 256
"""transformers continuous batching's smallest tokens per step: halving stops here, and a
``MemoryError`` at this size skips the column."""


def load_transformers_model(model_path: Path, dtype: str, device: torch.device) -> Any:
    """transformers' model of a folder or a ``.gguf`` file, in eval mode, with EOS switched
    off: ``generate`` then runs each row to ``max_new_tokens`` whatever it samples.
    (``min_new_tokens`` would not do: it masks EOS out of the logits, so the greedy choice
    changes wherever EOS was the argmax, and the outputs would differ from an ``ignore_eos``
    engine's.)"""
    from transformers import AutoModelForCausalLM

    hf: Any
    if is_gguf(model_path):
        hf = _transformers_from_gguf(model_path, DTYPES[dtype])
    else:
        hf = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=DTYPES[dtype])
    hf = hf.to(device).eval()
    hf.generation_config.eos_token_id = None
    return hf


def _transformers_from_gguf(path: Path, dtype: torch.dtype) -> Any:
    """transformers' own reading of a ``.gguf`` file, dequantised to ``dtype``.

    ``from_pretrained(folder, gguf_file=...)`` insists on ``accelerate``, which is not a
    dependency here; these are its steps: the config from the file's metadata, a model of it,
    then ``load_gguf_checkpoint`` (which dequantises and undoes llama.cpp's q/k permutation).
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    if unexpected or set(missing) - ({"lm_head.weight"} if tied else set()):
        raise ValueError(
            f"transformers read {path.name} incompletely: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model.tie_weights()
    return model


def run_transformers_generate(
    hf: Any, requests: list[BenchRequest], batch: int, device: torch.device
) -> Column:
    """``generate`` on static batches of ``batch`` requests in arrival order, left-padded with
    id 0; a batch runs until its longest request is done, and each output is cut to its
    request's ``max_tokens``."""
    column = Column(f"transformers generate (batches of {min(batch, len(requests))})")
    warm = torch.tensor([requests[0].prompt[:8]], device=device)
    with torch.no_grad():
        hf.generate(
            warm,
            attention_mask=torch.ones_like(warm),
            max_new_tokens=2,
            do_sample=False,
            pad_token_id=0,
        )
    _synchronize(device)
    t0 = time.perf_counter()
    for start in range(0, len(requests), batch):
        chunk = requests[start : start + batch]
        width = max(len(r.prompt) for r in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(chunk):
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt) :] = 1
        with torch.no_grad():
            out = hf.generate(
                ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max(r.max_tokens for r in chunk),
                do_sample=False,
                pad_token_id=0,
            )
        column.outputs += [
            out[i, width : width + r.max_tokens].tolist() for i, r in enumerate(chunk)
        ]
    _synchronize(device)
    column.seconds = time.perf_counter() - t0
    return column


class _DropPsutilNotices(logging.Filter):
    """Continuous batching logs, on a CPU without ``psutil``, that it cannot read memory (once
    as an error): irrelevant when the cache size is given, so kept off the report."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "psutil" not in record.getMessage()


def run_transformers_continuous_batching(
    hf: Any, requests: list[BenchRequest], config: EngineConfig
) -> Column:
    """transformers' continuous batching, each request with its own ``max_new_tokens`` and no
    EOS (``eos_token_id=-1``). Its cache gets our KV budget (``max_total_tokens``, capped at the
    workload's need) in its own pages, and ``max_prefill_tokens`` as its tokens per step, halved
    while it refuses them: left to size itself on a CPU it reserves a share of the machine's RAM,
    which takes seconds and slows every step."""
    column = Column("transformers continuous batching")
    try:
        from transformers import ContinuousBatchingConfig, GenerationConfig
    except ImportError:
        column.skipped = "skipped (this transformers has no ContinuousBatchingConfig)"
        return column
    if not hasattr(hf, "continuous_batching_context_manager"):
        column.skipped = "skipped (this transformers has no continuous batching)"
        return column
    cb_logger = logging.getLogger("ContinuousBatchingLogger")
    notices = _DropPsutilNotices()
    cb_logger.addFilter(notices)
    generation_config = GenerationConfig(
        do_sample=False, max_new_tokens=max(r.max_tokens for r in requests), eos_token_id=-1
    )
    need = sum(len(r.prompt) + r.max_tokens for r in requests)  # every request at once
    budget = min(config.max_total_tokens or need, need)
    max_batch_tokens = config.max_prefill_tokens
    try:
        while True:
            cb_config = ContinuousBatchingConfig(max_batch_tokens=max_batch_tokens)
            cb_config.num_blocks = max(1, math.ceil(budget / cb_config.page_size))
            try:
                with hf.continuous_batching_context_manager(
                    generation_config=generation_config,
                    continuous_batching_config=cb_config,
                    block=True,
                    timeout=10,
                ) as manager:
                    _collect(manager, [BenchRequest(requests[0].prompt[:8], 2)])  # warm-up
                    t0 = time.perf_counter()
                    column.outputs = _collect(manager, requests)
                    column.seconds = time.perf_counter() - t0
                break
            except MemoryError:
                # Its estimate grows with tokens per step x cache size; halve and retry.
                if max_batch_tokens <= MIN_CB_BATCH_TOKENS:
                    raise
                max_batch_tokens //= 2
                column.name = f"transformers continuous batching ({max_batch_tokens} tokens/step)"
    except Exception as exc:  # anything it raises on this machine: report, run the rest
        column.skipped = f"skipped ({type(exc).__name__}: {exc})"
    finally:
        cb_logger.removeFilter(notices)
    return column


def _collect(manager: Any, requests: list[BenchRequest]) -> list[list[int]]:
    """Submit ``requests`` to a running continuous-batching manager; their outputs in order."""
    ids = [
        manager.add_request(r.prompt, max_new_tokens=r.max_tokens, eos_token_id=-1)
        for r in requests
    ]
    done: dict[str, list[int]] = {}
    while len(done) < len(ids):
        result = manager.get_result(timeout=1)
        if result is None:
            if not manager.is_running():
                raise RuntimeError("its generation thread stopped")
            continue
        if result.error is not None:
            raise RuntimeError(result.error)
        if result.is_finished():
            done[result.request_id] = list(result.generated_tokens)
    return [done[i] for i in ids]


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer reads when the work ends, not when it was queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
