"""``quantize_int8``: one scale per token *and head*. KV heads of one token can differ in
magnitude by orders (a few outlier heads are common), and a scale shared across heads would
round a small head's values to a handful of levels, or to zero."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vibe_sgl_lite.memory.kv_pool import INT8_MIN_SCALE, dequantize_int8, quantize_int8

pytestmark = pytest.mark.unit


@st.composite
def kv_rows(draw: st.DrawFn) -> torch.Tensor:
    """``[T, H, D]`` values whose heads have independent magnitudes, from 1e-3 to 1e3."""
    tokens, heads, head_dim = (
        draw(st.integers(1, 6)),
        draw(st.integers(2, 6)),
        draw(st.integers(1, 32)),
    )
    exponents = draw(st.lists(st.integers(-3, 3), min_size=heads, max_size=heads))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(tokens, heads, head_dim, generator=gen)
    magnitude = torch.tensor([10.0**e for e in exponents])
    return (x * magnitude[None, :, None]).to(dtype)


@settings(max_examples=200, deadline=None)
@given(kv_rows())
def test_each_token_and_head_has_its_own_scale(x: torch.Tensor) -> None:
    """``scale[t, h] = max|x[t, h]| / 127``, and every value of head ``h`` comes back within half
    a step of that head's own scale, whatever the other heads of the token hold."""
    q, scale = quantize_int8(x)
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == x.shape[:2]
    own_max = x.float().abs().amax(dim=-1)
    torch.testing.assert_close(scale, (own_max / 127).clamp_min(INT8_MIN_SCALE))
    # each (token, head) uses the full int8 range: its largest value maps to +-127
    assert bool((q.abs().amax(dim=-1) == 127)[own_max > 0].all())
    error = (dequantize_int8(q, scale, torch.float32) - x.float()).abs()
    half_step = scale[..., None] / 2
    assert bool((error <= half_step * (1 + 1e-4)).all()), (error / half_step).max()


def test_a_small_head_next_to_a_large_one_keeps_its_precision() -> None:
    """Head 1 is 1000x smaller than head 0: with its own scale it keeps 8-bit precision."""
    small = torch.linspace(-1.0, 1.0, 16)
    x = torch.stack([small * 1000.0, small])[None]  # [1 token, 2 heads, 16]
    q, scale = quantize_int8(x)
    assert scale[0].tolist() == pytest.approx([1000.0 / 127, 1.0 / 127])
    back = dequantize_int8(q, scale, torch.float32)
    assert (back[0, 1] - small).abs().max() <= 0.5 / 127 + 1e-7
