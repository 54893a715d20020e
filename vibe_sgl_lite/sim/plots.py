"""Matplotlib figures of a replay and of a sweep (imported only when a plot is asked for)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vibe_sgl_lite.sim.replay import ReplayResult
from vibe_sgl_lite.sim.report import Summary


def plot_replay(result: ReplayResult, folder: str | Path) -> list[Path]:
    """``kv.png`` (pool occupancy and queue over time) and ``latency.png`` (TTFT over arrival)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    samples = result.kv_samples[0]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([s.time for s in samples], [s.used * 100 for s in samples], label="KV pool used %")
    ax2 = ax.twinx()
    ax2.plot([s.time for s in samples], [s.waiting for s in samples], color="C1", label="waiting")
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("KV pool used (%)")
    ax2.set_ylabel("waiting requests")
    fig.legend(loc="upper right")
    fig.tight_layout()
    kv = folder / "kv.png"
    fig.savefig(kv, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.scatter([r.arrival for r in result.records], [r.ttft for r in result.records], s=2)
    ax.set_yscale("log")
    ax.set_xlabel("arrival (s)")
    ax.set_ylabel("TTFT (s)")
    fig.tight_layout()
    latency = folder / "latency.png"
    fig.savefig(latency, dpi=110)
    plt.close(fig)
    return [kv, latency]


def plot_sweep(
    x: Sequence[float], series: dict[str, Sequence[Summary]], xlabel: str, path: str | Path
) -> Path:
    """TTFT p50/p99 and TPOT p50 against ``x`` for each series (a policy, a chunk size...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, summaries) in enumerate(series.items()):
        color = f"C{i}"
        axes[0].plot(x, [s.ttft[50] for s in summaries], "-o", color=color, label=f"{name} p50")
        axes[0].plot(x, [s.ttft[99] for s in summaries], "--", color=color, label=f"{name} p99")
        axes[1].plot(x, [s.tpot[50] * 1e3 for s in summaries], "-o", color=color, label=name)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("TTFT (s)")
    axes[1].set_ylabel("TPOT p50 (ms)")
    for ax in axes:
        ax.set_xlabel(xlabel)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
