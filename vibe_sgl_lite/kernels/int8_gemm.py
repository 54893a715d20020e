"""W8A8 products on the CPU: int8 activations (one scale per 64 inputs of a row) times int8
weights (one scale per output channel), summed exactly in int32 (``int8_gemm.cpp``, beside this
file)::

    x [M, K] float ──absmax per (row, 64 inputs)──> xq int8 [M, Kp], sx [M, Kp / 64]
                                                       │
    qweight int8 [N, Kp], sw [N] ──────────────────────┤  vpdpbusd / vpmaddubsw tiles
                                                       v
          y[m, n] = (sum_g float(int32 dot of group g) * sx[m, g]) * sw[n]  (+ b[n])

Why groups of 64 and not one scale per row: a row's few outlier inputs (hundreds of times the
median in SmolLM2's MLP) then leave the rest a handful of levels, and SmolLM2-135M's perplexity
rose 6-7%; per 64 inputs it rose 0.5% (``docs/performance.md``). A per-tensor scale is out of
the question: it would make a request's output depend on the rest of its batch.

Why a kernel of our own, not ``torch._int_mm``: that op (oneDNN) takes one int32 sum per output,
so it fits one scale per row only; and for one row it was slower than torch's weight-only bf16
kernel (SmolLM2's 49152 x 576 LM head, one thread, AVX-512 Xeon: 3.7 ms against 2.8 ms).

The inner product is picked at run time from the CPU's instruction sets (``supported_isas``):
AVX-512 VNNI, AVX-VNNI, AVX2 or plain C++; tests run every one this CPU has against a torch
reference. Whatever M, a row goes through the same operations, so its output is bitwise the same
alone or in a batch.
"""

from __future__ import annotations

import torch

from vibe_sgl_lite.kernels.int_gemm_library import IntGemmLibrary

GROUP_SIZE = 64  # inputs per activation scale; the weight's columns are padded to a multiple
CHANNEL_BLOCK = 16  # output channels per packed block (one zmm of int32 lanes)
CHANNEL_MULTIPLE = 32  # the kernel's tiles are two blocks; rows are padded to a multiple


_LIBRARY = IntGemmLibrary(  # fake: [M, N] in x's dtype
    "int8_gemm",
    "int8 matrix kernel",
    {"int8_linear": lambda x, packed, wscale, bias, n, isa: x.new_empty(x.shape[0], n)},
)
supported_isas = _LIBRARY.supported_isas
best_isa = _LIBRARY.best_isa


def pack_weight(q: torch.Tensor) -> torch.Tensor:
    """int8 ``[N, K]`` (-127..127) -> the kernel's uint8 ``[Np / 16, Kp / 4, 64]``.

    ``packed[b, j, 4 c + r] = q[16 b + c, 4 j + r] + 128``: each 64-byte run holds 4 consecutive
    inputs of 16 channels, what one ``vpdpbusd`` multiplies by 4 broadcast activations. Zero
    weights pad K to a multiple of ``GROUP_SIZE`` and N to a multiple of ``CHANNEL_MULTIPLE``.
    """
    n, k = q.shape
    padded = torch.nn.functional.pad(q, (0, -k % GROUP_SIZE, 0, -n % CHANNEL_MULTIPLE))
    np_, kp = padded.shape
    blocks = padded.view(np_ // CHANNEL_BLOCK, CHANNEL_BLOCK, kp // 4, 4).transpose(1, 2)
    return (blocks.to(torch.int16) + 128).to(torch.uint8).reshape(np_ // CHANNEL_BLOCK, kp // 4, -1)


def int8_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    wscale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    isa: str | None = None,
) -> torch.Tensor:
    """``y [M, N] = W8A8(x [M, K]) @ W.T + b`` in ``x``'s dtype (float32, bfloat16, float16).

    ``packed``: ``pack_weight(wq)``; ``wscale``: float32 ``[N]`` (``W ~= wq * wscale[:, None]``);
    ``bias``: float32 ``[N]`` or ``None``. ``isa`` forces one of ``supported_isas()`` (default:
    the best); every one gives bitwise the same ``y``.
    """
    return _LIBRARY.ops().int8_linear(
        x.contiguous(), packed, wscale, bias, wscale.numel(), _LIBRARY.isa_code(isa)
    )
