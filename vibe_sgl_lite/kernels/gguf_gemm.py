"""GGUF block products on the CPU: the file's own Q8_0 / Q4_1 weights times activation rows
quantised on the fly to int8 in blocks of 32 (``gguf_gemm.cpp``, beside this file)::

    x [M, K] float ──per (row, 32 inputs): d = amax / 127──> xq int8, dx = fp16(d), sx = fp16(d * sum xq)
                                                               │
    W blocks as stored: Q8_0 (dw, 32 x int8)  ─────────────────┤  int32 dot per block
                        Q4_1 (dw, mw, 32 x 4-bit code)         │  (vpdpbusd / vpmaddubsw)
                                                               v
          y[m, n] = sum_j  idot[m, n, j] * dw[n, j] * dx[m, j]   (+ mw[n, j] * sx[m, j])

This is the arithmetic of llama.cpp's own CPU dot products (``ggml_vec_dot_q8_0_q8_0`` and
``ggml_vec_dot_q4_1_q8_1``): the same weight numbers, activation blocks of the same size and
rounding, only the order of the float sums differs. The activation scales belong to one row, so a
row's output is bitwise the same alone or in any batch.

Q4_0 (``w = dw * (q - 8)``) runs as Q4_1 with ``mw = -8 dw``: exact in fp16, the same codes.

Instruction sets as in ``kernels/int8_gemm.py`` (``supported_isas``: AVX-512 VNNI, AVX-VNNI,
AVX2, plain C++), all bitwise equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vibe_sgl_lite.kernels.int_gemm_library import IntGemmLibrary

BLOCK = 32  # inputs per block, weights and activations (GGUF's QK8_0 / QK4_1)
CHANNEL_BLOCK = 16  # output channels per packed block
CHANNEL_MULTIPLE = 32  # the kernel's tiles are two blocks; N is padded to a multiple
FORMATS = ("q8_0", "q4_1")  # index = the C++ Format code


_LIBRARY = IntGemmLibrary(  # fake: [M, N] in x's dtype
    "gguf_gemm",
    "GGUF block matrix kernel",
    {"gguf_linear": lambda x, packed, bias, n, fmt, isa: x.new_empty(x.shape[0], n)},
)
supported_isas = _LIBRARY.supported_isas
best_isa = _LIBRARY.best_isa


def _half_bytes(values: torch.Tensor) -> torch.Tensor:
    """float32 ``[Nb, 16, Kb]`` holding fp16 values -> their bytes ``[Nb, Kb, 32]`` per block."""
    half = values.to(torch.float16)
    if not torch.equal(half.float(), values.float()):
        raise ValueError("GGUF block scales must be float16 values")
    return half.transpose(1, 2).contiguous().view(torch.uint8)


def pack_weight(
    fmt: str, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None = None
) -> torch.Tensor:
    """A GGUF matrix's blocks -> the kernel's uint8 ``[Np / 16, K / 32, 576 | 320]``.

    ``fmt`` ``"q8_0"``: ``q`` int8 ``[N, K]``, ``d`` ``[N, K / 32]`` (``w = d * q``).
    ``fmt`` ``"q4_1"``: ``q`` codes 0..15 ``[N, K]``, ``d`` and ``m`` ``[N, K / 32]``
    (``w = d * q + m``). Scales are fp16 values (as stored in the file) in any float dtype.

    Per 16 channels and 32 inputs one run of bytes: the 16 ``d`` (and ``m``) as fp16 (Q8_0: and 32
    zero bytes, so the codes start on a 64-byte line), then the
    codes, 4 consecutive inputs of the 16 channels side by side (Q8_0: 8 such quads as
    ``q + 128``; Q4_1: 4 groups, inputs ``4h..4h+3`` in the low nibbles and ``16+4h..`` in the
    high ones). Zero blocks pad N to a multiple of 32.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    n, k = q.shape
    if k % BLOCK or d.shape != (n, k // BLOCK):
        raise ValueError(f"a [{n}, {k}] GGUF matrix needs K % 32 == 0 and scales [{n}, {k // 32}]")
    pad = -n % CHANNEL_MULTIPLE
    nb, kb = (n + pad) // CHANNEL_BLOCK, k // BLOCK
    heads = [_half_bytes(F.pad(d.float(), (0, 0, 0, pad)).view(nb, CHANNEL_BLOCK, kb))]
    if fmt == "q8_0":
        heads.append(torch.zeros(nb, kb, 32, dtype=torch.uint8))  # codes start on a cache line
        codes = F.pad(q.to(torch.int16) + 128, (0, 0, 0, pad), value=128)
        codes = codes.view(nb, CHANNEL_BLOCK, kb, 8, 4).permute(0, 2, 3, 1, 4).to(torch.uint8)
    else:
        if m is None:
            raise ValueError("q4_1 needs the block minima m")
        heads.append(_half_bytes(F.pad(m.float(), (0, 0, 0, pad)).view(nb, CHANNEL_BLOCK, kb)))
        nibbles = F.pad(q.to(torch.uint8), (0, 0, 0, pad)).view(nb, CHANNEL_BLOCK, kb, 2, 4, 4)
        nibbles = nibbles.permute(0, 2, 3, 4, 1, 5)  # [nb, kb, low/high, group, channel, 4]
        codes = nibbles[:, :, 0] | (nibbles[:, :, 1] << 4)
    return torch.cat([*heads, codes.reshape(nb, kb, -1)], dim=-1).contiguous()


def gguf_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    fmt: str,
    out_features: int,
    bias: torch.Tensor | None = None,
    *,
    isa: str | None = None,
) -> torch.Tensor:
    """``y [M, N] = x [M, K] @ W.T + b`` in ``x``'s dtype, ``W`` the GGUF blocks in ``packed``
    (``pack_weight(fmt, ...)``), ``x`` quantised per row in blocks of 32 (module docstring).

    ``bias``: float32 ``[N]`` or ``None``. ``isa`` forces one of ``supported_isas()`` (default:
    the best); every one gives bitwise the same ``y``.
    """
    code = _LIBRARY.isa_code(isa)
    return _LIBRARY.ops().gguf_linear(
        x.contiguous(), packed, bias, out_features, FORMATS.index(fmt), code
    )
