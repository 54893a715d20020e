"""The benchmark's results as data, the report they print, and the CPU's bf16 detection.

A run is a ``BenchResult``: the workload and one ``Column`` per engine (its time and outputs,
or why it was skipped). ``columns[0]`` is the reference, transformers ``generate``. Each
baseline's line ends with ``vibe-sgl-lite N.NNx`` (our tokens/s over its) and, after the
reference, how many of its outputs are identical to ``generate``'s.

``--dtype bfloat16`` is meant for CPUs with native bf16 (``avx512_bf16``/``amx_bf16``); the
report says whether this CPU has it, and elsewhere the run goes on with a warning, since
emulated bf16 measures the emulation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vibe_sgl_lite.bench.workload import BenchRequest

if TYPE_CHECKING:  # the report itself needs no torch: the CLI's import stays light
    from vibe_sgl_lite.config import EngineConfig

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of CPUs that compute in bf16 natively (AVX-512 BF16 dot products,
AMX tiles). Without them torch converts bf16 to fp32 around every op: slower than fp32."""


@dataclass
class Column:
    """One engine's run: its time and outputs, or why it did not run (``skipped``)."""

    name: str
    seconds: float = math.nan
    outputs: list[list[int]] = dataclasses.field(default_factory=list)
    skipped: str | None = None


@dataclass
class BenchResult:
    """Everything the report prints, as data. ``columns[0]`` is the reference (transformers
    ``generate``) and ``ours`` is vibe-sgl-lite's column."""

    model: str
    num_params: int
    config: EngineConfig
    threads: int
    bf16_flags: tuple[str, ...] | None  # None: /proc/cpuinfo unreadable
    requests: list[BenchRequest]
    seed: int
    columns: list[Column]
    ours: Column

    @property
    def output_tokens(self) -> int:
        """The output every engine must produce: the sum of the requests' ``max_tokens``."""
        return sum(r.max_tokens for r in self.requests)

    def tokens_per_second(self, column: Column) -> float:
        return self.output_tokens / column.seconds

    def identical(self, column: Column) -> int:
        """How many of ``column``'s outputs equal the reference's, token for token."""
        reference = self.columns[0].outputs
        return sum(ours == ref for ours, ref in zip(column.outputs, reference))

    def report(self) -> list[str]:
        """The printed report: model, CPU, workload, then one line per column."""
        config, requests = self.config, self.requests
        device = "" if config.device == "cpu" else f", {config.device}"
        prompts = [len(r.prompt) for r in requests]
        outputs = [r.max_tokens for r in requests]
        lines = [
            f"model: {self.model}, {self.num_params / 1e6:.1f}M params, {config.dtype}{device}, "
            f"threads={self.threads}",
        ]
        if config.device == "cpu":
            lines += bf16_report(self.bf16_flags, config.dtype)
        lines.append(
            f"workload: {len(requests)} requests, prompts {_span(prompts)} tokens, outputs "
            f"{_span(outputs)} tokens ({self.output_tokens} in all), seed {self.seed}"
        )
        ours_rate = self.tokens_per_second(self.ours)
        width = max(len(c.name) for c in self.columns)
        for column in self.columns:
            if column.skipped is not None:
                lines.append(f"{column.name}: {column.skipped}")
                continue
            rate = self.tokens_per_second(column)
            speedup = "" if column is self.ours else f"vibe-sgl-lite {ours_rate / rate:5.2f}x"
            line = (
                f"{column.name + ':':<{width + 1}} {column.seconds:8.2f} s {rate:9.1f} tok/s   "
                f"{speedup:<20}"
            )
            if column is self.columns[0]:
                line += "   (reference outputs)"
            else:
                line += f"   identical greedy outputs: {self.identical(column)}/{len(requests)}"
            lines.append(line)
        return lines


def _span(lengths: list[int]) -> str:
    """``"min..max (mean m)"``, or ``"n"`` when all are equal."""
    if min(lengths) == max(lengths):
        return str(lengths[0])
    return f"{min(lengths)}..{max(lengths)} (mean {sum(lengths) / len(lengths):.0f})"


# ---- the CPU's bf16 --------------------------------------------------------------------------


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...] | None:
    """The ``BF16_CPU_FLAGS`` this CPU reports (empty: none), or ``None`` without a readable
    ``/proc/cpuinfo`` (not Linux), where native bf16 is unknown."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return tuple(f for f in BF16_CPU_FLAGS if f in flags)


def bf16_report(flags: tuple[str, ...] | None, dtype: str) -> list[str]:
    """The detection line, and a warning line when bf16 is asked for without native bf16."""
    if flags is None:
        lines = ["cpu: native bf16 unknown (no /proc/cpuinfo)"]
    elif flags:
        lines = [f"cpu: native bf16 ({', '.join(flags)})"]
    else:
        lines = [f"cpu: no native bf16 (neither {' nor '.join(BF16_CPU_FLAGS)} in /proc/cpuinfo)"]
    if dtype == "bfloat16" and not flags:
        lines.append(
            "warning: --dtype bfloat16 without native bf16: torch emulates it, so every column "
            "measures the emulation (slower than float32)"
        )
    return lines
