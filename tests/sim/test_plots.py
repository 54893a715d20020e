"""``plot_sweep`` writes a PNG of a sweep (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vibe_sgl_lite.sim.report import Summary

pytest.importorskip("matplotlib")


def summary(ttft: float, tpot: float) -> Summary:
    pct = {q: ttft for q in (50, 90, 99)}
    return Summary(
        3,
        pct,
        {q: tpot for q in (50, 90, 99)},
        pct,
        {50: 0, 90: 0, 99: 0},
        10.0,
        1.0,
        1.0,
        0.5,
        0.6,
        1.0,
        0.2,
    )


def test_plot_sweep_writes_a_png(tmp_path: Path) -> None:
    from vibe_sgl_lite.sim.plots import plot_sweep

    series = {"fcfs": [summary(0.1, 0.01), summary(0.5, 0.02)], "lpm": [summary(0.1, 0.01)] * 2}
    path = plot_sweep([1.0, 2.0], series, "rate", tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
