"""float32 products on the CPU over a column-major weight, ours (``fp32_gemm.cpp``)::

    x [M, K] ──┐        for each tile of 64 output channels, 4 rows at a time, k = 0 .. K-1:
               ├──>         acc[m, :] = fma(x[m, k], wt[k, tile], acc[m, :])
    wt [K, N] ─┘        y [M, N] = acc (+ b)

Why our own loop and not MKL: a decode step's products have a handful of rows, so they are bound
by reading the weights, and MKL's small-row ``sgemm`` reads them well below the machine's
bandwidth. This loop reads each weight once per 4 rows (2 on AVX2), prefetching the rows ahead.
On an AMD EPYC (Zen 5, AVX-512, one thread) it ran a decoder's products 1.0-1.3x MKL's speed at
1-2 rows, 2-3x at 4-64 and 1.3-1.5x at prefill sizes (128-512 rows);
``benchmarks/fp32_gemm.py`` measures both on any machine (``docs/benchmarks.md``).

Every output is one ``fma`` chain over ``k`` in order, whatever the instruction set (AVX-512,
AVX2, plain C++: ``supported_isas``) or the batch: all paths are bitwise equal, and a row's
output is bitwise the same alone or in any batch. MKL's is not (it changes kernels with M), so
with every product here a request's tokens no longer depend on what it was batched with, or on
how much of its prompt came from the prefix cache.
"""

from __future__ import annotations

import torch

from vibe_sgl_lite.kernels.int_gemm_library import IntGemmLibrary

ISA_NAMES = ("scalar", "avx2", "avx512")  # index = the C++ Isa code

_LIBRARY = IntGemmLibrary(  # fake: [M, N]
    "fp32_gemm",
    "float32 matrix kernel",
    {"fp32_linear": lambda x, wt, bias, isa: x.new_empty(x.shape[0], wt.shape[1])},
    ISA_NAMES,
    ("-march=native",),
)
supported_isas = _LIBRARY.supported_isas
best_isa = _LIBRARY.best_isa


def isa_code(isa: str | None = None) -> int:
    """The op's code for ``isa`` (default: the best here); builds the library on first use."""
    return _LIBRARY.isa_code(isa)


def is_column_major(weight: torch.Tensor) -> bool:
    """Whether ``weight [N, K]`` is stored as its transpose, contiguous (``models/weight_layout``)."""
    return weight.dim() == 2 and weight.t().is_contiguous()


def fp32_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    isa: str | None = None,
) -> torch.Tensor:
    """``F.linear(x [M, K], weight [N, K], bias)`` for float32 CPU tensors, ``weight``
    column-major (``is_column_major``). ``isa`` forces one of ``supported_isas()`` (default: the
    best); every one gives bitwise the same result."""
    if not is_column_major(weight):
        raise ValueError("fp32_linear: weight must be column-major (weight.t() contiguous)")
    return _LIBRARY.ops().fp32_linear(x.contiguous(), weight.t(), bias, _LIBRARY.isa_code(isa))
