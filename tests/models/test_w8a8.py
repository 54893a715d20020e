"""W8A8 int8 (``quantization="int8"``: ``models/w8a8.py`` over ``kernels/int8_gemm.py``).

The oracle for the kernel is a float64 torch computation of the documented formula (activation
scales per row and 64 inputs, exact int32 group sums, per-channel weight scales): the kernel may
only differ from it by float32 rounding. Each instruction set this CPU runs is checked against
the plain C++ path for bitwise equality, and every row against itself computed alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.kernels.int8_gemm import (
    GROUP_SIZE,
    int8_linear,
    pack_weight,
    supported_isas,
)
from vibe_sgl_lite.models.quantization import quantize_int8
from vibe_sgl_lite.models.w8a8 import Int8Linear
from vibe_sgl_lite.sampling import SamplingParams


def _reference(x: torch.Tensor, q: torch.Tensor, wscale: torch.Tensor) -> torch.Tensor:
    """The W8A8 product from its definition: ``x [M, K]`` float32, ``q`` int8 ``[N, K]``. The
    rounding to int8 is done in float32 as documented; the sums and scales in float64."""
    m, k = x.shape
    groups = F.pad(x, (0, -k % GROUP_SIZE)).view(m, -1, GROUP_SIZE)
    amax = groups.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    xq = torch.round((groups * inv).clamp(-127, 127)).double()
    wq = F.pad(q.double(), (0, -k % GROUP_SIZE)).view(q.shape[0], -1, GROUP_SIZE)
    dots = torch.einsum("mgk,ngk->mng", xq, wq)  # exact integers
    sx = (amax / 127).double()[..., 0]
    return (dots * sx[:, None, :]).sum(-1) * wscale.double()


@pytest.mark.unit
@pytest.mark.parametrize("n, k", [(7, 33), (64, 128), (100, 576), (40, 200)])
@pytest.mark.parametrize("m", [1, 3, 5, 21])
def test_kernel_matches_its_definition_on_every_instruction_set(n: int, m: int, k: int) -> None:
    torch.manual_seed(n * m + k)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    wscale = torch.rand(n) + 0.01
    x = torch.randn(m, k) * torch.rand(m, 1) * 10
    x[0, : min(k, 70)] = 0  # an all-zero group (and, for k <= 64, an all-zero row)
    reference = _reference(x, q, wscale).float()
    packed = pack_weight(q)
    outputs = {isa: int8_linear(x, packed, wscale, isa=isa) for isa in supported_isas()}
    assert "scalar" in outputs
    tolerance = 2e-6 * float(reference.abs().max()) + 1e-30
    torch.testing.assert_close(outputs["scalar"], reference, rtol=1e-5, atol=tolerance)
    for isa, y in outputs.items():
        assert torch.equal(y, outputs["scalar"]), isa


@pytest.mark.unit
@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 12),
    pick=st.integers(0, 11),
    scale=st.floats(1e-3, 1e3),
    isa=st.sampled_from(["scalar", "best"]),
)
def test_a_row_is_the_same_alone_and_in_any_batch(
    rows: int, pick: int, scale: float, isa: str
) -> None:
    """Per-row scales and a kernel that never mixes rows: bitwise, not approximately."""
    torch.manual_seed(rows)
    q = torch.randint(-127, 128, (70, 150), dtype=torch.int8)
    packed, wscale, bias = pack_weight(q), torch.rand(70), torch.randn(70)
    batch = torch.randn(rows, 150) * scale
    row = pick % rows
    chosen = None if isa == "best" else isa
    together = int8_linear(batch, packed, wscale, bias, isa=chosen)
    alone = int8_linear(batch[row : row + 1].clone(), packed, wscale, bias, isa=chosen)
    assert torch.equal(together[row], alone[0])


@pytest.mark.unit
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_linear_layer_is_near_the_float_product(dtype: torch.dtype) -> None:
    """Random Gaussian weights and inputs, measured <= 1.2% of the largest output; bound 2.5%."""
    torch.manual_seed(0)
    linear = nn.Linear(200, 48, bias=True)
    weight = quantize_int8(linear.weight)
    layer = Int8Linear(weight.q, weight.scale, linear.bias, 200)
    x = torch.randn(2, 3, 200).to(dtype)
    with torch.no_grad():
        y, ref = layer(x), linear(x.float())
    assert y.shape == (2, 3, 48) and y.dtype == dtype
    assert float((y.float() - ref).abs().max() / ref.abs().max()) < 0.025


@pytest.mark.unit
def test_bad_kernel_inputs_are_refused() -> None:
    q = torch.randint(-127, 128, (32, 64), dtype=torch.int8)
    packed = pack_weight(q)
    with pytest.raises(RuntimeError, match="Kp must be a multiple of 64 and >= K"):
        int8_linear(torch.randn(1, 65), packed, torch.rand(32))
    with pytest.raises(RuntimeError, match="wscale must be float32"):
        int8_linear(torch.randn(1, 64), packed, torch.rand(32).double())
    with pytest.raises(RuntimeError, match="x must be float32, bfloat16 or float16"):
        int8_linear(torch.randn(1, 64).double(), packed, torch.rand(32))


@pytest.mark.integration
def test_same_prompt_alone_and_in_a_batch_gives_the_same_tokens_and_logprobs(
    qwen3_dir: Path,
) -> None:
    """End to end through the engine: prefill and decode rows of other requests beside it do not
    move a single logprob of this one (the prefix cache is off, so nothing else is shared)."""
    with ModelRunner(
        qwen3_dir, max_total_tokens=1024, quantization="int8", enable_prefix_cache=False
    ) as runner:
        assert runner.engine is not None
        assert any(isinstance(m, Int8Linear) for m in runner.engine.executor.model.modules())
        assert_alone_equals_batched(runner)


def assert_alone_equals_batched(runner: ModelRunner) -> None:
    """One prompt decoded alone, then beside prefill and decode rows of three other requests:
    the same 8 greedy tokens and the same top-5 logprobs, bit for bit."""
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=5, ignore_eos=True)
    prompt = list(range(5, 29))
    others = [list(range(40, 40 + n)) for n in (3, 17, 60)]
    alone = runner.generate_outputs(prompt, params)[0]
    batched = runner.generate_outputs([others[0], prompt, *others[1:]], params)[1]
    assert batched.token_ids == alone.token_ids and len(alone.token_ids) == 8
    assert alone.logprobs is not None and batched.logprobs is not None
    for a, b in zip(alone.logprobs, batched.logprobs, strict=True):
        assert (a.token_id, a.logprob, a.top) == (b.token_id, b.logprob, b.top)
