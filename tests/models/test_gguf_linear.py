"""A GGUF file's blocks multiplied as stored (``models/gguf_linear.py``), end to end through the
engine. The kernel itself is checked in ``tests/kernels/test_gguf_gemm.py``; which modes keep
which blocks, and that they are the file's weights, in ``test_quantization.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.model_factory import build_llama
from tests.models.test_gguf import write_gguf
from tests.models.test_w8a8 import assert_alone_equals_batched
from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.models.gguf_linear import GGUFLinear


@pytest.mark.integration
@pytest.mark.parametrize("storage, mode", [("Q8_0", "int8"), ("Q4_1", "int4")])
def test_same_prompt_alone_and_in_a_batch_gives_the_same_tokens_and_logprobs(
    tmp_path: Path, tokenizer_dir: Path, storage: str, mode: str
) -> None:
    """Activation blocks belong to one row: prefill and decode rows of other requests beside it
    do not move a single logprob of this one (prefix cache off: nothing else is shared)."""
    hf_dir = build_llama(tmp_path / "hf", tokenizer_dir)
    path = write_gguf(hf_dir, tmp_path / f"{storage}.gguf", "llama", storage=storage)
    with ModelRunner(
        path, max_total_tokens=1024, quantization=mode, enable_prefix_cache=False
    ) as runner:
        assert runner.engine is not None
        kept = [m for m in runner.engine.executor.model.modules() if isinstance(m, GGUFLinear)]
        assert kept and {m.fmt for m in kept} >= {storage.lower()}
        assert_alone_equals_batched(runner)
