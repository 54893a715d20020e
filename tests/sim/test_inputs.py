"""The cost fit recovers a known model; bad traces, cost files and flags fail in one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from vibe_sgl_lite.cli import main
from vibe_sgl_lite.sim import CostModel, StepComposition, fit, load_cost, load_trace, scale_trace
from vibe_sgl_lite.sim.cost import FEATURES

KNOWN = dict(zip(FEATURES, (4e-3, 2e-5, 1e-4, 3e-4, 2e-7, 5e-9)))


def test_fit_recovers_a_synthetic_cost_model() -> None:
    rng = random.Random(0)
    truth = CostModel(coefficients=KNOWN)
    steps, seconds = [], []
    for _ in range(300):
        step = StepComposition(
            prefill_tokens=(p := rng.choice([0, rng.randint(2, 2048)])),
            prefill_rows=(rows := (rng.randint(1, 4) if p else 0)),
            decode_rows=(d := rng.randint(0, 64)),
            decode_kv_tokens=d * rng.randint(1, 2000),
            prefill_kv_pairs=p * p // 2 // max(1, rows),
        )
        steps.append(step)
        seconds.append(truth.step_seconds(step) * (1 + rng.gauss(0, 0.001)))
    coefficients, error = fit(steps, seconds)
    for name, value in KNOWN.items():
        assert coefficients[name] == pytest.approx(value, rel=0.1), name
    assert error["median_rel_error"] < 0.005


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("TIMESTAMP,ContextTokens\n0,5\n", "missing column(s) GeneratedTokens"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n0,5,3\n1,-4,3\n", "row 3: ContextTokens"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n0,5,-1\n", "row 2: GeneratedTokens"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n5,5,3\n1,5,3\n", "row 3: TIMESTAMP goes back"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nnoon,5,3\n", "row 2: TIMESTAMP 'noon'"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
    ],
)
def test_bad_trace_is_one_line_naming_file_row_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_trace(path)
    message = str(info.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_azure_timestamps_parse_from_zero() -> None:
    trace = load_trace(Path("benchmarks/data/azure_llm_inference_2023_conv.csv"), limit=3)
    assert trace[0].arrival == 0.0 and trace[1].arrival == pytest.approx(4.3145788)
    assert (trace[0].prompt_len, trace[0].output_len) == (374, 44)


def test_cost_file_for_another_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cost.json"
    CostModel(coefficients=KNOWN, shape={"hidden_size": 256, "dtype": "float32"}).save(path)
    assert load_cost(path, {"hidden_size": 256}).coefficients == KNOWN
    with pytest.raises(
        ValueError,
        match=r"cost.json: calibrated for another model shape: "
        r"hidden_size is 256 in the cost file, 4096 in the model",
    ):
        load_cost(path, {"hidden_size": 4096})
    path.write_text(json.dumps({"coefficients": {"intercept": 1.0}}))
    with pytest.raises(ValueError, match="missing coefficient"):
        load_cost(path)


def test_rate_scale_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = load_trace(_write(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n0,5,3\n"))
    with pytest.raises(ValueError, match="rate_scale must be > 0"):
        scale_trace(trace, 0.0)
    argv = ["sim", "replay", "--trace", str(tmp_path / "trace.csv"), "--cost", "x.json"]
    assert main([*argv, "--rate-scale", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rate-scale must be > 0" in err


def test_cli_replay_prints_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "sim",
        "replay",
        "--trace",
        "benchmarks/data/azure_llm_inference_2023_conv.csv",
        "--cost",
        "benchmarks/data/cost_h100_llama3_8b.json",
        "--limit",
        "50",
        "--policy",
        "lpm",
        "--prefix-share",
        "0.5",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for key in (
        "TTFT ms",
        "TPOT ms",
        "queue ms",
        "preemptions",
        "throughput",
        "SLO attainment",
        "KV pool used",
    ):
        assert key in out
