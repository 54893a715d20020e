"""A scheduler laboratory: the engine's own scheduler on a virtual clock (``docs/simulator.md``).

trace.py       trace CSVs (arrivals, prompt and output lengths), prompts with shared prefixes
cost.py        the step cost model: linear in the step's composition, fitted, saved as JSON
calibrate.py   times real engine steps over a grid and fits the cost model
simulator.py   EngineSim: Scheduler + RadixCache + PageAllocator, a cost model for the model
replay.py      a trace through one or more simulated engines behind a router
report.py      TTFT / TPOT / queue percentiles, throughput, SLO attainment, KV occupancy
plots.py       matplotlib figures of a study
"""

from vibe_sgl_lite.sim.cost import CostModel, StepComposition, fit, load_cost
from vibe_sgl_lite.sim.replay import ROUTERS, ReplayResult, replay
from vibe_sgl_lite.sim.report import Summary, lines, summarize
from vibe_sgl_lite.sim.simulator import EngineSim, RequestRecord
from vibe_sgl_lite.sim.trace import (
    PromptBuilder,
    PromptSpec,
    TraceRequest,
    load_trace,
    scale_trace,
)

__all__ = [
    "ROUTERS",
    "CostModel",
    "EngineSim",
    "PromptBuilder",
    "PromptSpec",
    "ReplayResult",
    "RequestRecord",
    "StepComposition",
    "Summary",
    "TraceRequest",
    "fit",
    "lines",
    "load_cost",
    "load_trace",
    "replay",
    "scale_trace",
    "summarize",
]
