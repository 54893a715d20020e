"""``benchmarks/sparse_attention.py`` at a tiny size: it runs, and its numbers obey what must hold.

Dense is the reference (reads everything, KL 0 against itself); every sparse method at ratio
1/8 reads well under half of the KV; the top-k oracle, which keeps the keys with the highest true
scores, stays closer to dense than Quest's page bound at the same ratio; the int8 pool needs
well under the float32 pool's bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_sparse_attention_benchmark_smoke(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bench = load_benchmark(monkeypatch, "sparse_attention")
    argv = ["--context", "64", "--eval-tokens", "16", "--windows", "1", "--repeats", "1"]
    results = bench.main(argv + ["--plot", str(tmp_path / "plot.png")])
    out = capsys.readouterr().out

    expected = [(c.method, c.options) for c in bench.configurations(64, 16)]
    assert [(r.method, r.options) for r in results] == expected
    for method, options in expected:  # one printed row per configuration
        assert sum(line.startswith(f"{method:<12} {options}") for line in out.splitlines()) == 1
    assert "hardware:" in out and "threads" in out
    assert (tmp_path / "plot.png").stat().st_size > 0

    rows = {(r.method, r.options.split(",")[0]): r for r in results}
    dense = rows["dense", "full-precision KV (reference)"]
    assert dense.kv_read_fraction == 1.0
    assert abs(dense.mean_kl) < 1e-6
    for r in results:
        assert r.perplexity > 1 and r.mean_kl >= -1e-6 and r.seconds > 0

    streaming = [r for r in results if r.method == "streaming"]
    assert streaming[0].kv_read_fraction < 0.5  # the 1/8 window
    for method in ("quest", "topk_oracle"):
        assert rows[method, "ratio 0.125"].kv_read_fraction < 0.5
    for ratio in ("0.125", "0.25", "0.5"):
        quest, oracle = rows["quest", f"ratio {ratio}"], rows["topk_oracle", f"ratio {ratio}"]
        assert oracle.mean_kl <= quest.mean_kl

    int8 = rows["int8 kv", "dense"]
    assert int8.kv_read_fraction == 1.0
    assert int8.kv_bytes_ratio is not None and int8.kv_bytes_ratio < 0.6
    assert int8.greedy_agreement is not None and 0.0 <= int8.greedy_agreement <= 1.0
    assert int8.mean_kl < streaming[0].mean_kl  # quantising keeps far closer than dropping keys
