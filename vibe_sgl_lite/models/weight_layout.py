"""Where a linear layer's weight lies in memory: rows ``[out, in]`` or columns ``[in, out]``.

A checkpoint stores ``nn.Linear.weight`` as ``[out_features, in_features]``, row-major, and
``F.linear(x, W)`` computes ``x @ W.T``. On CPU, float32, the product then reaches MKL as a GEMM
with a transposed right operand, and for small batches (2-63 rows: every decode step below
batch 64) that path is slow. The same numbers stored column-major (``W.T`` contiguous, so ``W``
itself keeps its shape ``[out, in]`` and strides ``(1, out)``) reach MKL untransposed::

    F.linear(x [M, 512], W [151936, 512]), float32, one thread (ms)   M=4    8     12    64
    row-major W     (the checkpoint's layout)                          47    78    105   156
    column-major W  (W.t().contiguous().t())                           35    51     53   107

The same holds for the decoder's own layers (``[1536, 512]``: 0.34 -> 0.17 ms at M=8). Nothing
else changes: the module, its ``weight`` attribute and its shape are the same, so tensor
parallelism, quantisation and weight tying read it as before. At 16 rows and more the two
layouts give bitwise-equal products; below 16 MKL takes another kernel and the last bits can
differ (as they differ between batch sizes anyway).

The gain was measured for float32 on CPU, so ``"auto"`` picks columns only there. bfloat16 goes
through oneDNN, where neither layout won consistently, and GPU libraries take either layout at
full speed: both keep the checkpoint's rows. A tied embedding shares the weight and so looks its
rows up in a column-major matrix: a strided gather, about 15 us per prompt token at hidden 512,
against about 0.5 ms of compute per prompt token in the rest of the model.

A column-major weight also lets the products skip MKL: ``layers.Linear`` runs those of at most
``fp32_gemm_rows`` rows through our loop (``kernels/fp32_gemm.py``), which streams each weight
once per 4 rows and gives a row the same bits in any batch. ``resolve_fp32_gemm_rows`` sets
``fp32_gemm_rows`` from the ``fp32_gemm_max_rows`` setting (default: every product).
"""

from __future__ import annotations

import torch
from torch import nn

from vibe_sgl_lite.config import WEIGHT_LAYOUTS
from vibe_sgl_lite.kernels import fp32_gemm
from vibe_sgl_lite.models.layers import Linear


def resolve_weight_layout(layout: str, device: torch.device, dtype: torch.dtype) -> str:
    """``"row"`` or ``"column"`` for ``layout`` (``"auto"``: columns for float32 on CPU)."""
    if layout not in WEIGHT_LAYOUTS:
        raise ValueError(
            f"weight_layout must be one of {', '.join(WEIGHT_LAYOUTS)}, got {layout!r}"
        )
    if layout != "auto":
        return layout
    return "column" if device.type == "cpu" and dtype == torch.float32 else "row"


EVERY_PRODUCT = 2**62
"""``fp32_gemm_rows`` for "every product, whatever its rows"."""
AVX2_ROWS = 8
"""The default with only the AVX2 path: emulated on a Zen 5 (``ATEN_CPU_CAPABILITY=avx2``,
MKL on AVX2 too), our loop ran a decoder's products 1.3-1.6x faster than MKL at 1-4 rows, even
at 8-16 and 0.65-0.86x at 64 (``docs/benchmarks.md``)."""


def resolve_fp32_gemm_rows(
    max_rows: int | None, layout: str, device: torch.device, dtype: torch.dtype
) -> int:
    """The most rows a product sends to our loop: 0 unless the weights are column-major float32
    on CPU. There ``max_rows``; by default every product (``EVERY_PRODUCT``) where the loop runs
    its AVX-512 path, ``AVX2_ROWS`` where it runs its AVX2 one, else 0 (what was measured)."""
    if layout != "column" or device.type != "cpu" or dtype != torch.float32:
        return 0
    if max_rows is None and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return 0
    if max_rows == 0:
        return 0
    try:
        isa = fp32_gemm.best_isa()  # builds now, at load, rather than inside the first step
    except RuntimeError as e:
        raise ValueError(
            f"fp32_gemm_max_rows: could not build the float32 CPU kernel ({e}); install a C++ "
            "compiler and ninja, or pass fp32_gemm_max_rows=0"
        ) from e
    if max_rows is not None:
        return max_rows
    return {"avx512": EVERY_PRODUCT, "avx2": AVX2_ROWS}.get(isa, 0)


def relayout_linear_weights(model: nn.Module, layout: str, fp32_gemm_rows: int = 0) -> int:
    """Store every float ``nn.Linear`` weight of ``model`` in ``layout`` (``"row"`` or
    ``"column"``), in place; returns how many weights were rewritten.

    Idempotent, and a weight shared by several modules (a tied LM head) is rewritten once.
    Quantised layers are not ``nn.Linear`` and keep their packed layout. Every ``layers.Linear``
    gets ``fp32_gemm_rows`` (column-major only: our loop reads ``weight.t()``).
    """
    if fp32_gemm_rows and layout != "column":
        raise ValueError(f"fp32_gemm_rows needs column-major weights, got layout {layout!r}")
    done: set[int] = set()
    for module in model.modules():
        if not isinstance(module, nn.Linear) or not module.weight.is_floating_point():
            continue
        if isinstance(module, Linear):
            module.fp32_gemm_rows = fp32_gemm_rows
            module.fp32_gemm_isa = fp32_gemm.isa_code() if fp32_gemm_rows else 0
        weight = module.weight
        if id(weight) in done:
            continue
        done.add(id(weight))
        if layout == "column":
            weight.data = weight.data.t().contiguous().t()
        else:
            weight.data = weight.data.contiguous()
    return len(done)
