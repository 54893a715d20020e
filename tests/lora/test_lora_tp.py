"""LoRA under tensor parallelism (two worker processes on Gloo): the same greedy tokens as peft.

Column-parallel projections (qkv, gate/up) hold ``B``'s rows of their own output slice and the
whole ``A``; row-parallel ones (o, down) hold ``A``'s columns of their input slice, all-reduce
the ``[N, r]`` shrink output, and the whole ``B`` (``models/lora/linear.py``). The adapters
loaded at start and one loaded at run time are both read by each worker from their folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.lora.conftest import greedy, peft_greedy
from vibe_sgl_lite import ModelRunner

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

NAMES: list[str | None] = ["all_rslora", None, "qv", "mlp_o_k"]
PROMPTS = [list(range(10, 30)), [5, 6, 7], list(range(40, 49)), list(range(60, 71))]


def test_tp2_mixed_adapters_match_peft(
    qwen3_dir: Path, adapters: dict[str, Path], peft_model: Any
) -> None:
    expected = [peft_greedy(peft_model, name, ids, 6) for ids, name in zip(PROMPTS, NAMES)]
    start = {n: str(adapters[n]) for n in ("all_rslora", "qv")}
    with ModelRunner(
        qwen3_dir, tp_size=2, lora_paths=start, max_total_tokens=512, page_size=4
    ) as runner:
        runner.load_lora("mlp_o_k", adapters["mlp_o_k"])
        params = [greedy(n, 6) for n in NAMES]
        assert [o.token_ids for o in runner.generate_outputs(PROMPTS, params)] == expected
