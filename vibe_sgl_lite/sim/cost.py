"""The cost model: how long one engine step takes, from what the step computes.

A step is one forward over a flat batch of rows (``scheduler.rows``). Its duration is modelled
as linear in six features of that batch (``StepComposition``)::

    seconds = intercept                        launch, Python, sampling setup
            + per_prefill_token  * prefill tokens         linear layers on prompt chunks
            + per_prefill_row    * prefill rows           a row's overhead, its LM-head row
            + per_decode_row     * decode rows            a token through every layer + LM head
            + per_decode_kv_token * KV tokens decodes read    paged attention, memory-bound
            + per_prefill_kv_pair * (query, key) pairs of prefills   attention, compute-bound

Outside the steps, ``per_request`` seconds are spent once per request when it is added
(``Engine.add_request``: validation, the prompt checks, the generator and output-processor
setup); the engine thread does it between two steps, so the simulator adds it to its clock.

A row of one token is a decode row (the last token of a prompt costs the same as an output
token). Memory traffic of the weights is in the intercept: it is paid once a step.

``fit`` recovers the coefficients from timed steps by non-negative least squares on relative
error (a 2 ms decode step counts as much as a 2 s prefill); ``CostModel`` is saved as JSON with
the model's shape, and ``load_cost`` refuses a file made for another shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vibe_sgl_lite.batch.forward_batch import BatchRow

FEATURES = (
    "intercept",
    "per_prefill_token",
    "per_prefill_row",
    "per_decode_row",
    "per_decode_kv_token",
    "per_prefill_kv_pair",
)


@dataclass(frozen=True)
class StepComposition:
    """What one step computes (``from_rows``); the cost model's input."""

    prefill_tokens: int = 0
    prefill_rows: int = 0
    decode_rows: int = 0
    decode_kv_tokens: int = 0
    prefill_kv_pairs: int = 0

    @classmethod
    def from_rows(cls, rows: Sequence[BatchRow]) -> StepComposition:
        prefill_tokens = prefill_rows = decode_rows = decode_kv = pairs = 0
        for row in rows:
            n, start = len(row.token_ids), row.start_pos
            if n == 1:
                decode_rows += 1
                decode_kv += start + 1
            else:
                prefill_rows += 1
                prefill_tokens += n
                pairs += n * start + n * (n + 1) // 2  # query i reads keys 0..start+i
        return cls(prefill_tokens, prefill_rows, decode_rows, decode_kv, pairs)

    def features(self) -> tuple[float, ...]:
        """The row of the design matrix, in ``FEATURES`` order."""
        return (
            1.0,
            self.prefill_tokens,
            self.prefill_rows,
            self.decode_rows,
            self.decode_kv_tokens,
            self.prefill_kv_pairs,
        )


@dataclass
class CostModel:
    """Seconds per step as ``coefficients · features``; ``shape`` names the model it fits."""

    coefficients: dict[str, float]
    shape: dict[str, int | str] = field(default_factory=dict)
    source: str = ""
    kv_capacity_tokens: int | None = None  # the KV pool the calibrated engine had
    fit_error: dict[str, float] = field(default_factory=dict)
    per_request: float = 0.0  # seconds of add_request per request, outside the steps

    def __post_init__(self) -> None:
        missing = [f for f in FEATURES if f not in self.coefficients]
        if missing:
            raise ValueError(f"cost model: missing coefficient(s) {', '.join(missing)}")
        bad = [f for f in FEATURES if not float(self.coefficients[f]) >= 0]
        if bad:
            raise ValueError(f"cost model: coefficient(s) {', '.join(bad)} must be >= 0")
        if not float(self.per_request) >= 0:
            raise ValueError(f"cost model: per_request must be >= 0, got {self.per_request!r}")
        self._coef = tuple(float(self.coefficients[f]) for f in FEATURES)

    def step_seconds(self, step: StepComposition) -> float:
        c = self._coef
        return (
            c[0]
            + c[1] * step.prefill_tokens
            + c[2] * step.prefill_rows
            + c[3] * step.decode_rows
            + c[4] * step.decode_kv_tokens
            + c[5] * step.prefill_kv_pairs
        )

    def save(self, path: str | Path) -> None:
        data = asdict(self)
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


def load_cost(path: str | Path, expect_shape: Mapping[str, int | str] | None = None) -> CostModel:
    """Read a cost file; ``expect_shape``: refuse one calibrated for another model shape."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the cost file ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("coefficients"), dict):
        raise ValueError(f"{path}: no 'coefficients' object (write it with 'sim calibrate')")
    try:
        model = CostModel(
            coefficients=data["coefficients"],
            shape=data.get("shape", {}),
            source=data.get("source", ""),
            kv_capacity_tokens=data.get("kv_capacity_tokens"),
            fit_error=data.get("fit_error", {}),
            per_request=data.get("per_request", 0.0),
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if expect_shape is not None:
        for key, value in expect_shape.items():
            if key in model.shape and model.shape[key] != value:
                raise ValueError(
                    f"{path}: calibrated for another model shape: {key} is "
                    f"{model.shape[key]!r} in the cost file, {value!r} in the model"
                )
    return model


def fit(
    steps: Sequence[StepComposition], seconds: Sequence[float]
) -> tuple[dict[str, float], dict[str, float]]:
    """Non-negative least squares on relative error; returns ``(coefficients, error)``.

    ``error``: median and 90th-percentile absolute relative error of the fit over ``steps``,
    and the number of steps. A feature that never varies (no prefill in the data, say) gets 0.
    """
    import numpy as np

    if len(steps) != len(seconds) or len(steps) < len(FEATURES):
        raise ValueError(f"fit needs >= {len(FEATURES)} timed steps, got {len(steps)}")
    x = np.array([s.features() for s in steps], dtype=np.float64)
    y = np.array(seconds, dtype=np.float64)
    if not (y > 0).all():
        raise ValueError("fit: every step time must be > 0")
    weighted_x, weighted_y = x / y[:, None], np.ones_like(y)
    scale = np.maximum(np.abs(weighted_x).max(axis=0), 1e-30)  # condition the columns
    active = [i for i in range(len(FEATURES)) if x[:, i].any()]
    coef = np.zeros(len(FEATURES))
    while active:  # active-set NNLS: drop the most negative coefficient, refit
        sol, *_ = np.linalg.lstsq(weighted_x[:, active] / scale[active], weighted_y, rcond=None)
        sol = sol / scale[active]
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    rel = np.abs(x @ coef - y) / y
    error = {
        "median_rel_error": float(np.median(rel)),
        "p90_rel_error": float(np.percentile(rel, 90)),
        "num_steps": float(len(y)),
    }
    return dict(zip(FEATURES, map(float, coef))), error
