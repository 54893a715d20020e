"""Our float32 loop (``kernels/fp32_gemm.py``) and where the engine uses it.

The oracle is ``F.linear`` in float64 on the same numbers: the loop may differ from it only by
float32 rounding of a K-term sum. Every instruction set this CPU runs must be bitwise equal to the
plain C++ path, and every row bitwise equal to itself computed alone (batch invariance).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.core.runner import ModelRunner
from vibe_sgl_lite.kernels import fp32_gemm
from vibe_sgl_lite.kernels.fp32_gemm import fp32_linear, supported_isas
from vibe_sgl_lite.models.layers import Linear
from vibe_sgl_lite.models.loader import load_model
from vibe_sgl_lite.models.weight_layout import AVX2_ROWS, EVERY_PRODUCT, resolve_fp32_gemm_rows
from vibe_sgl_lite.sampling import SamplingParams


def column_major(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) / k**0.5).t().contiguous().t()


def rounding_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A float32 K-term sum's worst-case rounding error: K ulps of the sum of |terms|."""
    k = x.shape[1]
    return k * torch.finfo(torch.float32).eps * (x.abs().double() @ w.abs().double().t())


@pytest.mark.unit
@pytest.mark.parametrize("n, k", [(1, 1), (7, 33), (64, 256), (100, 70), (200, 768), (17, 5)])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("with_bias", [False, True])
def test_loop_matches_float64_and_is_the_same_on_every_instruction_set(
    n: int, k: int, rows: int, with_bias: bool
) -> None:
    w = column_major(n, k, seed=n + k)
    torch.manual_seed(rows)
    x = torch.randn(rows, k) * 3
    bias = torch.randn(n) if with_bias else None
    expected = F.linear(x.double(), w.double(), None if bias is None else bias.double())
    scalar = fp32_linear(x, w, bias, isa="scalar")
    assert scalar.dtype == torch.float32 and scalar.shape == (rows, n)
    assert ((scalar.double() - expected).abs() <= rounding_bound(x, w) + 1e-6).all()
    for isa in supported_isas():
        assert torch.equal(fp32_linear(x, w, bias, isa=isa), scalar), isa


@pytest.mark.unit
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 150),
    k=st.integers(1, 300),
    rows=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_a_row_is_bitwise_the_same_alone_or_in_any_batch(
    n: int, k: int, rows: int, seed: int, data: st.DataObject
) -> None:
    w = column_major(n, k, seed)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed + 1))
    batch = fp32_linear(x, w)
    r = data.draw(st.integers(0, rows - 1))
    assert torch.equal(fp32_linear(x[r : r + 1], w)[0], batch[r])
    start = data.draw(st.integers(0, r))
    assert torch.equal(fp32_linear(x[start : r + 1], w)[-1], batch[r])


@pytest.mark.unit
def test_a_row_major_weight_is_refused() -> None:
    with pytest.raises(ValueError, match="column-major"):
        fp32_linear(torch.randn(2, 8), torch.randn(4, 8))


@pytest.mark.unit
@pytest.mark.parametrize("value", [-1, True, 2.0, "8"])
def test_the_setting_is_checked_by_name(value: object) -> None:
    with pytest.raises(ValueError, match="fp32_gemm_max_rows"):
        EngineConfig(fp32_gemm_max_rows=value)  # type: ignore[arg-type]


@pytest.mark.unit
def test_only_float32_column_major_weights_on_cpu_use_the_loop() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_fp32_gemm_rows(8, "column", cpu, torch.float32) == 8
    assert resolve_fp32_gemm_rows(0, "column", cpu, torch.float32) == 0
    for layout, device, dtype in [
        ("row", cpu, torch.float32),
        ("column", cpu, torch.bfloat16),
        ("column", cuda, torch.float32),
    ]:
        assert resolve_fp32_gemm_rows(8, layout, device, dtype) == 0
    auto = resolve_fp32_gemm_rows(None, "column", cpu, torch.float32)
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        assert auto == 0
    else:
        assert auto == {"avx512": EVERY_PRODUCT, "avx2": AVX2_ROWS}.get(fp32_gemm.best_isa(), 0)


@pytest.mark.integration
def test_the_loaded_model_sends_few_rows_to_the_loop_and_gives_mkl_s_logits(
    qwen3_dir: Path,
) -> None:
    """Every decoder product and the LM head get ``fp32_gemm_rows``; a 3-row step through the loop
    agrees with the same step through ``F.linear`` to float32 rounding."""
    model, _ = load_model(qwen3_dir, "float32", "cpu", fp32_gemm_max_rows=4)
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert linears and all(m.fp32_gemm_rows == 4 for m in linears)
    assert model.lm_head in linears
    x = torch.randn(3, model.config.hidden_size)
    head = model.lm_head
    through_loop = head(x)
    head.fp32_gemm_rows = 0
    through_mkl = head(x)
    assert torch.allclose(through_loop, through_mkl, rtol=1e-5, atol=1e-5)
    baseline, _ = load_model(qwen3_dir, "float32", "cpu", fp32_gemm_max_rows=0)
    assert all(m.fp32_gemm_rows == 0 for m in baseline.modules() if isinstance(m, Linear))


@pytest.mark.integration
def test_a_request_s_logprobs_do_not_depend_on_its_batch(qwen3_dir: Path) -> None:
    """With every float32 product in our loop, a request's logprobs are bitwise the same alone
    and batched with others of other lengths, in its prefill and in every decode step (the
    design's invariant 5, here down to the last bit rather than to the greedy token). With MKL's
    products (``fp32_gemm_max_rows=0``) this fails on an AMD EPYC (Zen 5)."""
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=3)
    alone_prompt = list(range(5, 19))
    others = [list(range(40, 40 + n)) for n in (3, 27, 9)]
    settings = dict(enable_prefix_cache=False, max_total_tokens=2048, fp32_gemm_max_rows=1 << 30)
    with ModelRunner(qwen3_dir, **settings) as runner:  # type: ignore[arg-type]
        (alone,) = runner.generate_outputs([alone_prompt], params)
        batched = runner.generate_outputs([others[0], alone_prompt, *others[1:]], params)[1]
    assert batched.token_ids == alone.token_ids
    assert batched.logprobs == alone.logprobs


@pytest.mark.unit
@pytest.mark.parametrize("cap, allowed", [("avx2", {"avx2", "scalar"}), ("default", {"scalar"})])
def test_torch_s_capability_variable_caps_our_instruction_set(
    monkeypatch: pytest.MonkeyPatch, cap: str, allowed: set[str]
) -> None:
    """``ATEN_CPU_CAPABILITY=avx2`` makes an AVX-512 machine run our loops as an AVX2 one."""
    best = fp32_gemm._LIBRARY._best
    saved = list(best)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", cap)
    try:
        best.clear()
        assert fp32_gemm.best_isa() in allowed
    finally:
        best[:] = saved
