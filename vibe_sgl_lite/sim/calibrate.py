"""Calibration: time the engine's own steps over a grid of compositions, fit the cost model.

    for each point of the grid                          (CalibrationGrid)
        prefill: one request of P tokens                -> a step of P prefill tokens
        decode:  B requests of L tokens, prefilled,     -> steps of B decode rows reading ~B*L KV
                 then a few decode steps
        mixed:   B decoding requests + one new prompt   -> a step with both
    every step is ``Engine.step()`` itself, timed with ``perf_counter``; its composition is read
    from the rows the scheduler built for it (``StepComposition.from_rows``)
    every ``Engine.add_request`` is timed too: its median is ``per_request``
    fit the six coefficients (``cost.fit``), print the error, save with the model's shape

The timings include everything a step does on this machine (scheduling, the forward,
sampling, output processing), so the fitted model predicts the engine's step, not just the
model's forward. Nothing is cached between points: prompts are random token ids.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.core.engine import Engine
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.scheduler import ScheduledBatch
from vibe_sgl_lite.scheduler.request import Request
from vibe_sgl_lite.sim.cost import CostModel, StepComposition, fit

SHAPE_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
)


@dataclass(frozen=True)
class CalibrationGrid:
    """The compositions timed; lengths above the model's limit are cut to fit."""

    prefill_tokens: tuple[int, ...] = (16, 64, 128, 256, 512, 768)
    decode_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    context_lens: tuple[int, ...] = (32, 256, 640)
    decode_steps: int = 4
    repeats: int = 2


def model_shape(config: ModelConfig, dtype: str) -> dict[str, int | str]:
    """What a cost file is valid for: the model's dimensions and the dtype it ran in."""
    shape: dict[str, int | str] = {f: getattr(config, f) for f in SHAPE_FIELDS}
    shape["dtype"] = dtype
    return shape


class _TimedEngine:
    """An ``Engine`` whose steps are timed and whose rows are kept (one list per step)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.steps: list[StepComposition] = []
        self.seconds: list[float] = []
        self._rows: list[BatchRow] = []
        build_rows = engine.scheduler.rows

        def rows(batch: ScheduledBatch) -> list[BatchRow]:
            self._rows = build_rows(batch)
            return self._rows

        engine.scheduler.rows = rows  # type: ignore[method-assign]
        self.rng = random.Random(0)
        # Served traffic samples (temperature 1, a seeded generator per request): time that
        # path, not greedy argmax, which is cheaper per row and per request.
        self.params = SamplingParams(max_tokens=1 << 20, ignore_eos=True)
        self.add_seconds: list[float] = []

    def add(self, num_tokens: int) -> Request:
        vocab = self.engine.model_config.vocab_size
        ids = [self.rng.randrange(1, vocab) for _ in range(num_tokens)]
        start = time.perf_counter()
        req = self.engine.add_request(ids, self.params)
        self.add_seconds.append(time.perf_counter() - start)
        return req

    def step(self, record: bool = True) -> None:
        start = time.perf_counter()
        self.engine.step()
        seconds = time.perf_counter() - start
        if record and self._rows:
            self.steps.append(StepComposition.from_rows(self._rows))
            self.seconds.append(seconds)

    def prefill_all(self, requests: list[Request], record: bool = True) -> None:
        while any(r.num_computed_tokens < r.num_prompt_tokens for r in requests):
            self.step(record)

    def drop(self, requests: list[Request]) -> None:
        for req in requests:
            self.engine.abort(req)


def calibrate(
    model_path: str | Path,
    config: EngineConfig,
    grid: CalibrationGrid = CalibrationGrid(),
    log: Callable[[str], None] = print,
) -> CostModel:
    """Time ``grid`` on the model at ``model_path`` with ``config``; the fitted cost model."""
    engine = Engine(model_path, config)
    try:
        timed = _TimedEngine(engine)
        limit = engine.max_model_len - grid.decode_steps - 2
        prefills = sorted({min(p, limit) for p in grid.prefill_tokens})
        contexts = sorted({min(c, limit) for c in grid.context_lens})
        warm = [timed.add(min(64, limit))]  # first steps pay one-time costs: not recorded
        timed.prefill_all(warm, record=False)
        timed.step(record=False)
        timed.drop(warm)
        for _ in range(grid.repeats):
            for p in prefills:
                req = timed.add(p)
                timed.step()
                timed.drop([req])
            for b in grid.decode_batches:
                for c in contexts:
                    reqs = [timed.add(c) for _ in range(b)]
                    timed.prefill_all(reqs)
                    for _ in range(grid.decode_steps):
                        timed.step()
                    newcomer = timed.add(prefills[len(prefills) // 2])  # a mixed step
                    timed.step()
                    timed.drop([*reqs, newcomer])
            log(f"  round done: {len(timed.steps)} steps timed")
        coefficients, error = fit(timed.steps, timed.seconds)
        adds = sorted(timed.add_seconds[1:])  # the warm-up request's add is not counted
        return CostModel(
            coefficients=coefficients,
            shape=model_shape(engine.model_config, config.dtype),
            source=f"measured by 'vibe-sgl-lite sim calibrate' on {model_path} "
            f"({config.device}, {config.threads_per_rank} threads, {config.dtype})",
            kv_capacity_tokens=engine.allocator.num_pages * config.page_size,
            fit_error=error,
            per_request=adds[len(adds) // 2] if adds else 0.0,
        )
    finally:
        engine.close()


def fit_lines(model: CostModel) -> list[str]:
    """The coefficients and the fit's error, as ``sim calibrate`` prints them."""
    out = [f"  {name:<22} {value:.3e} s" for name, value in model.coefficients.items()]
    out.append(f"  {'per_request':<22} {model.per_request:.3e} s (add_request, outside steps)")
    err = model.fit_error
    if err:
        out.append(
            f"  fit error over {int(err['num_steps'])} steps: median "
            f"{err['median_rel_error']:.1%}, p90 {err['p90_rel_error']:.1%} (relative)"
        )
    return out
