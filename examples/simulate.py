"""Study a scheduling policy in the simulator: the engine's own scheduler on a virtual clock.

A research policy is a ``Scheduler`` subclass that orders the waiting queue; the simulator runs
it against 400 requests of the Azure conversation trace at three times their rate, with a GPU
cost profile, beside LPM.

    python examples/simulate.py
"""

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.scheduler import Scheduler
from vibe_sgl_lite.sim import (
    PromptSpec,
    lines,
    load_cost,
    load_trace,
    replay,
    scale_trace,
    summarize,
)


class ShortestPromptFirst(Scheduler):
    def policy_order(self):
        return sorted(self.waiting, key=lambda r: (len(r.token_ids), r.arrival_order))


trace = scale_trace(load_trace("benchmarks/data/azure_llm_inference_2023_conv.csv", 400), 3.0)
cost = load_cost("benchmarks/data/cost_h100_llama3_8b.json")  # hand-written, see its "source"
config = EngineConfig(max_total_tokens=cost.kv_capacity_tokens, schedule_policy="lpm")
for name, make in (("lpm", None), ("shortest-prompt-first", ShortestPromptFirst)):
    result = replay(trace, config, cost, PromptSpec(prefix_share=0.5), make_scheduler=make)
    print(f"--- {name}")
    print("\n".join(lines(result, summarize(result, 2.0, 0.1), 2.0, 0.1)))
