"""The GGUF block kernel (``kernels/gguf_gemm.py``): Q8_0 and Q4_1 weights as stored, activation
rows quantised in blocks of 32.

The oracle is a float64 torch computation of the documented arithmetic (the weight blocks
dequantised exactly, the activations rounded as llama.cpp's ``quantize_row_q8_1`` rounds them):
the kernel may only differ from it by float32 rounding. Every instruction set this CPU runs is
checked bitwise against the plain C++ path, and every row against itself computed alone.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vibe_sgl_lite.kernels.gguf_gemm import (
    BLOCK,
    FORMATS,
    gguf_linear,
    pack_weight,
    supported_isas,
)


def random_blocks(
    fmt: str, n: int, k: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(q, d, m)`` of a random GGUF matrix ``[n, k]``: fp16-valued scales, the codes' full range."""
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(n, k // BLOCK, generator=g) * 0.05 + 1e-4).half().float()
    if fmt == "q8_0":
        return torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8), d, None
    m = (-torch.rand(n, k // BLOCK, generator=g) * 0.4).half().float()
    return torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8), d, m


def dequantize(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """``w = d * q (+ m)`` per block of 32, float64 ``[N, K]``."""
    n, k = q.shape
    w = q.double().view(n, -1, BLOCK) * d.double()[..., None]
    if m is not None:
        w = w + m.double()[..., None]
    return w.view(n, k)


def reference(
    x: torch.Tensor, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None
) -> torch.Tensor:
    """The product by its definition: ``x`` float32 ``[M, K]`` rounded per block of 32 in
    float32 as documented (scales stored as fp16), the sums in float64."""
    rows, k = x.shape
    blocks = x.view(rows, -1, BLOCK)
    dx32 = blocks.abs().amax(-1) / 127
    inv = torch.where(dx32 > 0, 1 / dx32, torch.zeros_like(dx32))
    xq = torch.round((blocks * inv[..., None]).clamp(-127, 127))
    dx = dx32.half().double()
    sx = (dx32 * xq.sum(-1)).half().double()
    n = q.shape[0]
    idot = torch.einsum("mjk,njk->mnj", xq.double(), q.double().view(n, -1, BLOCK))  # exact
    y = (idot * d.double()[None] * dx[:, None, :]).sum(-1)
    if m is not None:
        y = y + (m.double()[None] * sx[:, None, :]).sum(-1)
    return y


@pytest.mark.unit
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n, k", [(7, 32), (64, 128), (100, 576), (40, 1536)])
@pytest.mark.parametrize("rows", [1, 3, 8, 33])
def test_kernel_matches_its_definition_on_every_instruction_set(
    fmt: str, n: int, k: int, rows: int
) -> None:
    q, d, m = random_blocks(fmt, n, k, seed=n * rows + k)
    torch.manual_seed(rows)
    x = torch.randn(rows, k) * torch.rand(rows, 1) * 10
    x[0, : min(k, 40)] = 0  # an all-zero block (and, for k = 32, an all-zero row)
    x[-1, -1] = 300.0  # an outlier in a block of its own
    bias = torch.randn(n)
    expected = (reference(x, q, d, m) + bias.double()).float()
    packed = pack_weight(fmt, q, d, m)
    outputs = {isa: gguf_linear(x, packed, fmt, n, bias, isa=isa) for isa in supported_isas()}
    assert "scalar" in outputs
    tolerance = 2e-6 * float(expected.abs().max())
    torch.testing.assert_close(outputs["scalar"], expected, rtol=1e-5, atol=tolerance)
    for isa, y in outputs.items():
        assert torch.equal(y, outputs["scalar"]), isa


@pytest.mark.unit
@pytest.mark.parametrize("fmt", FORMATS)
def test_an_all_zero_input_row_gives_the_bias(fmt: str) -> None:
    q, d, m = random_blocks(fmt, 33, 64, seed=1)
    bias = torch.randn(33)
    y = gguf_linear(torch.zeros(2, 64), pack_weight(fmt, q, d, m), fmt, 33, bias)
    assert torch.equal(y, bias.expand(2, 33))


@pytest.mark.unit
@pytest.mark.parametrize("fmt", FORMATS)
def test_blocks_stand_for_the_dequantised_weight(fmt: str) -> None:
    """Against a plain float product the only error is the activations' 8-bit rounding."""
    q, d, m = random_blocks(fmt, 96, 256, seed=2)
    x = torch.randn(5, 256)
    exact = x.double() @ dequantize(q, d, m).T
    y = gguf_linear(x, pack_weight(fmt, q, d, m), fmt, 96)
    relative = (y.double() - exact).norm() / exact.norm()
    assert relative < 0.01


@pytest.mark.unit
@settings(max_examples=25, deadline=None)
@given(
    fmt=st.sampled_from(FORMATS),
    rows=st.integers(1, 12),
    pick=st.integers(0, 11),
    scale=st.floats(1e-3, 1e3),
    isa=st.sampled_from(["scalar", "best"]),
)
def test_a_row_is_the_same_alone_and_in_any_batch(
    fmt: str, rows: int, pick: int, scale: float, isa: str
) -> None:
    """Per-row block scales and a kernel that never mixes rows: bitwise, not approximately."""
    q, d, m = random_blocks(fmt, 70, 160, seed=rows)
    packed = pack_weight(fmt, q, d, m)
    torch.manual_seed(rows)
    batch = torch.randn(rows, 160) * scale
    chosen = None if isa == "best" else isa
    together = gguf_linear(batch, packed, fmt, 70, isa=chosen)
    i = pick % rows
    alone = gguf_linear(batch[i : i + 1], packed, fmt, 70, isa=chosen)
    assert torch.equal(together[i : i + 1], alone)


@pytest.mark.unit
def test_bfloat16_input_gives_bfloat16_output() -> None:
    q, d, m = random_blocks("q4_1", 32, 64, seed=3)
    x = torch.randn(3, 64)
    packed = pack_weight("q4_1", q, d, m)
    y = gguf_linear(x.bfloat16(), packed, "q4_1", 32)
    assert y.dtype == torch.bfloat16
    as_float = gguf_linear(x.bfloat16().float(), packed, "q4_1", 32)
    assert torch.equal(y, as_float.bfloat16())  # the same sums, rounded once at the end


@pytest.mark.unit
def test_bad_shapes_are_refused() -> None:
    q, d, m = random_blocks("q8_0", 32, 64, seed=4)
    with pytest.raises(ValueError, match="K % 32"):
        pack_weight("q8_0", q[:, :40], d, m)
    with pytest.raises(ValueError, match="fmt"):
        pack_weight("q5_0", q, d, m)
    with pytest.raises(ValueError, match="float16"):
        pack_weight("q8_0", q, d + 1e-6, m)
    with pytest.raises(RuntimeError, match="K must be a multiple of 32"):
        gguf_linear(torch.randn(1, 96), pack_weight("q8_0", q, d), "q8_0", 32)
