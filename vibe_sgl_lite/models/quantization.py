"""Quantised linear layers: ``int8`` (W8A8, ``models/w8a8.py``), and the weight-only modes here.

``quantization`` is one of ``MODES``: ``"int8"`` rounds weights *and* activation rows to int8 and
multiplies integers (``Int8Linear``); ``"int8_weight_only"`` and ``"int4"`` keep float
activations and dequantise inside the matmul (``QuantizedLinear``, the rest of this docstring).
All three share the weight numbers below (``QuantizedWeight``: int8 per channel, int4 groups).

Why it pays: decoding one token multiplies a single activation row by every weight matrix, about
two flops per weight read, so batch-1 decode is bound by memory traffic, not arithmetic. Storing
the weights in 8 bits (4 bits) reads a quarter (an eighth) of float32's bytes; the kernel turns
them back into floats in registers, next to the multiply, so no float copy of the weight is ever
written to memory. Norms, attention, the KV cache and the layer's input and output stay in the
model's dtype.

The two layouts, for a linear layer ``y = x @ W.T + b`` with ``W: [N, K]`` (N outputs, K inputs):

    int8  symmetric, one scale per output channel (row):
              W[n, k] ~= q[n, k] * scale[n]                  q: int8 [N, K], scale: [N]
          kernel: torch._weight_int8pack_mm(x [M, K], q [N, K], scale [N]) -> [M, N]

    int4  asymmetric, one (scale, zero) per group of G consecutive inputs of a row:
              W[n, k] ~= (q[n, k] - 8) * scale[n, g] + zero[n, g],   g = k // G,   q in 0..15
          kernel: torch._weight_int4pack_mm_for_cpu(x [M, K], packed, G, scale_zero [K/G, N, 2])
          where packed = torch._convert_weight_to_int4pack_for_cpu(q int32 [N, K], 1): uint8
          [N, K/2] in a tiled order of the kernel's own (not plain nibble pairs).

int4 needs groups: 16 levels over a whole row would be swamped by its largest weight. int8's 256
levels are enough per row. (A GGUF file's own Q8_0/Q4_0/Q4_1 blocks are not converted to
either layout: ``models/gguf_linear.py`` multiplies them as stored.)

What the CPU kernels of torch 2.13 do (read in ATen's ``int8mm_kernel.cpp``/``int4mm_kernel.cpp``
and measured on an AVX-512 Xeon):

* Both accept float32, float16 and bfloat16 activations, but only **bfloat16** has a vectorised
  x86 kernel; float32 and float16 run a scalar triple loop, 5-70x slower than float32 ``F.linear``
  (a 576x576 layer, one row: 33 us float32, 289 us int8-fp32, 30 us int8-bf16). So the fused path
  rounds the input rows to bfloat16, runs the bfloat16 kernel (which accumulates in float32) and
  casts the result back; that costs about 2^-9 relative rounding per element, below int8's own
  weight error.
* bfloat16 int8 loads 16 inputs at a time with aligned loads: K % 16 != 0 gives NaN or a crash.
  int4 wants G in {32, 64, 128, 256}, K % G == 0 and N % 16 == 0. ``QuantizedLinear`` pads the
  weight (zero columns, zero rows sliced off the output) and the input to meet these rules.
* The kernels are matrix-vector loops: from a few dozen rows on (prefill) they are slower than a
  float GEMM. int8 therefore dequantises its weight and calls ``F.linear`` for more than
  ``FUSED_MAX_ROWS`` rows (the cast of an int8 matrix is cheap next to a GEMM of that many rows);
  int4's packed layout cannot be unpacked cheaply, so int4 stays fused and its prefill is slower.
* Off the CPU (CUDA and MPS have ops of these names but other packings and dtype rules, untested
  here) both modes dequantise and call ``F.linear``.

Numbers (``QuantizedWeight``) and kernel layout (``QuantizedLinear``) are kept apart: the former
can be cut and concatenated by rows, which is how the merged ``qkv_proj``/``gate_up_proj`` layers
are assembled from their checkpoint parts, some of which (Q4_0/Q4_1 GGUF blocks) arrive already
quantised; the latter is packed once, for the device it runs on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("int8", "int8_weight_only", "int4")  # the layer kinds; weight numbers: "int8"/"int4"
INT4_GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_INT4_GROUP_SIZE = 32
INT4_ROWS_MULTIPLE = 16  # the CPU int4 packing works on blocks of 16 output rows
INT8_K_MULTIPLE = 16  # the bfloat16 int8 kernel reads 16 inputs at a time
FUSED_MAX_ROWS = 16  # int8: above this many rows, dequantise + F.linear is faster (measured)

Slot = tuple[str, int]
"""``(module path, shard index)``: one checkpoint tensor's rows in a (possibly merged) layer."""


@dataclass
class QuantizedWeight:
    """A quantised ``[N, K]`` weight as numbers, before any kernel packing (see module docstring).

    ``q``: int8 ``[N, K]`` (int8 mode) or uint8 codes 0..15 ``[N, K]`` (int4 mode).
    ``scale``: float32 ``[N]`` (int8) or ``[N, K / group_size]`` (int4).
    ``zero``: float32 ``[N, K / group_size]`` for int4, ``None`` for int8.

    Two more modes hold a GGUF file's blocks as stored (``models/gguf.py``, ``block_codes``;
    group size 32): ``"q8_0"`` (``w = scale * q``, ``q`` int8) and ``"q4_1"``
    (``w = scale * q + zero``, ``q`` codes 0..15).
    """

    mode: str
    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None = None
    group_size: int | None = None

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight ``[N, K]`` these numbers stand for."""
        if self.mode == "int8":
            return (self.q.float() * self.scale[:, None]).to(dtype)
        assert self.group_size is not None
        n, k = self.q.shape
        codes = self.q.float().view(n, k // self.group_size, self.group_size)
        if self.mode == "q8_0":
            return (codes * self.scale[..., None]).view(n, k).to(dtype)
        assert self.zero is not None
        if self.mode == "q4_1":
            return (codes * self.scale[..., None] + self.zero[..., None]).view(n, k).to(dtype)
        w = (codes - 8) * self.scale[..., None] + self.zero[..., None]
        return w.view(n, k).to(dtype)

    def map_rows(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> QuantizedWeight:
        """The same weight with ``fn`` (a permutation or slice of dim 0) applied to every part."""
        zero = None if self.zero is None else fn(self.zero)
        return QuantizedWeight(self.mode, fn(self.q), fn(self.scale), zero, self.group_size)

    @staticmethod
    def cat(parts: list[QuantizedWeight]) -> QuantizedWeight:
        """Stack the rows of ``parts`` (same mode, K and group size) into one weight."""
        first = parts[0]
        if any(
            (p.mode, p.group_size, p.shape[1]) != (first.mode, first.group_size, first.shape[1])
            for p in parts
        ):
            raise ValueError("cannot concatenate quantised weights of different layouts")
        zero = None if first.zero is None else torch.cat([p.zero for p in parts])  # type: ignore[misc]
        return QuantizedWeight(
            first.mode,
            torch.cat([p.q for p in parts]),
            torch.cat([p.scale for p in parts]),
            zero,
            first.group_size,
        )


def quantize_int8(weight: torch.Tensor) -> QuantizedWeight:
    """Round-to-nearest symmetric int8 per row: ``scale[n] ~= max_k |W[n, k]| / 127``.

    Symmetric (no zero point) because the fused kernel has no place for one, and the values of a
    trained weight row are centred near zero anyway. -128 is left unused so that ``-W`` quantises
    to ``-q``. The scale is rounded *up* to the nearest bfloat16 value, the dtype the fused
    kernel reads it in, so both paths multiply by the same scale and ``|q| <= 127`` still holds."""
    w = weight.detach().float()
    scale = _round_up_to_bfloat16(w.abs().amax(dim=1).clamp(min=1e-12) / 127)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return QuantizedWeight("int8", q, scale)


def _round_up_to_bfloat16(x: torch.Tensor) -> torch.Tensor:
    """The smallest bfloat16 values ``>= x`` (positive float32 ``x``), as float32."""
    rounded = x.to(torch.bfloat16).float()
    bumped = torch.nextafter(x.to(torch.bfloat16), torch.tensor(float("inf"), dtype=torch.bfloat16))
    return torch.where(rounded >= x, rounded, bumped.float())


def quantize_int4(
    weight: torch.Tensor, group_size: int = DEFAULT_INT4_GROUP_SIZE
) -> QuantizedWeight:
    """Round-to-nearest asymmetric int4 per group: each group's [min, max] spread over 0..15.

    ``scale = (max - min) / 15`` and, in the kernel's convention ``W = (q - 8) * scale + zero``,
    ``zero = min + 8 * scale``. Asymmetric because 16 levels are too few to waste on the side of
    zero a small group barely uses. ``K`` must be a multiple of ``group_size``."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"int4: in_features {k} is not a multiple of the group size {group_size}")
    w = weight.detach().float().view(n, k // group_size, group_size)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    q = torch.round((w - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    return QuantizedWeight("int4", q.view(n, k), scale, lo + 8 * scale, group_size)


def quantize_weight(
    weight: torch.Tensor, mode: str, group_size: int = DEFAULT_INT4_GROUP_SIZE
) -> QuantizedWeight:
    """``quantize_int8`` or ``quantize_int4`` by ``mode`` (a ``MODES`` entry or ``"int8"``).

    Rows are padded with zero columns up to the kernel's multiple (16 for int8, ``group_size``
    for int4); they cost nothing in the product and ``QuantizedLinear`` pads the input to match."""
    if mode not in MODES:
        raise ValueError(f"quantization must be one of {', '.join(MODES)}, got {mode!r}")
    mode = weight_format(mode)
    multiple = INT8_K_MULTIPLE if mode == "int8" else group_size
    padded = F.pad(weight.detach().float(), (0, -weight.shape[1] % multiple))
    return quantize_int8(padded) if mode == "int8" else quantize_int4(padded, group_size)


def weight_format(mode: str) -> str:
    """The numbers a ``MODES`` entry stores: ``"int4"``, or ``"int8"`` for both int8 modes."""
    return "int4" if mode == "int4" else "int8"


class QuantizedLinear(nn.Module):
    """``y = x @ W.T + b`` through torch's fused weight-only kernels (see the module docstring).

    ``x: [..., in_features]`` in float32, bfloat16 or float16 -> ``[..., out_features]`` in the
    same dtype. Built on the device it will run on (the int4 packing depends on it).

    Buffers, not parameters: int8: ``qweight`` int8 ``[N, K_pad]``, ``scales`` bfloat16 ``[N]``
    (exact). int4 on CPU: ``qweight`` the kernel's packing of ``[N_pad, K_pad]``, ``scales``
    ``[K_pad / G, N_pad, 2]`` (scale, zero) in bfloat16. int4 elsewhere: ``qweight`` uint8 codes
    ``[N, K_pad]``, ``scales`` float32 ``[N, K_pad / G, 2]``.
    """

    def __init__(
        self, weight: QuantizedWeight, bias: torch.Tensor | None, in_features: int
    ) -> None:
        super().__init__()
        self.mode, self.in_features = weight.mode, in_features
        self.out_features, self.padded_in = weight.shape
        self.group_size = weight.group_size or 0
        self.fused = weight.q.device.type == "cpu"
        self.qweight: torch.Tensor
        self.scales: torch.Tensor
        self.bias: torch.Tensor | None
        if weight.mode == "int8":
            self.register_buffer("qweight", weight.q.contiguous())
            self.register_buffer("scales", weight.scale.bfloat16())  # exact, see quantize_int8
        else:
            assert weight.zero is not None
            scale_zero = torch.stack([weight.scale, weight.zero], dim=-1).float()  # [N, K/G, 2]
            if self.fused:
                rows = -self.out_features % INT4_ROWS_MULTIPLE  # zero rows: code 8, scale 0
                codes = F.pad(weight.q.to(torch.int32), (0, 0, 0, rows), value=8)
                scale_zero = F.pad(scale_zero, (0, 0, 0, 0, 0, rows))
                self.register_buffer("qweight", torch._convert_weight_to_int4pack_for_cpu(codes, 1))
                self.register_buffer("scales", scale_zero.transpose(0, 1).contiguous().bfloat16())
            else:
                self.register_buffer("qweight", weight.q.contiguous())
                self.register_buffer("scales", scale_zero)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, mode: str, group_size: int = DEFAULT_INT4_GROUP_SIZE
    ) -> QuantizedLinear:
        """Quantise a float ``nn.Linear``."""
        return cls(
            quantize_weight(linear.weight, mode, group_size), linear.bias, linear.in_features
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, dtype = x.shape[:-1], x.dtype
        x2 = x.reshape(-1, self.in_features)
        if self.padded_in != self.in_features:
            x2 = F.pad(x2, (0, self.padded_in - self.in_features))
        if not self.fused or (self.mode == "int8" and x2.shape[0] > FUSED_MAX_ROWS):
            y = F.linear(x2, self.dequantized_weight(dtype))
        else:
            # A fresh bfloat16 copy: the only vectorised kernel, and aligned as it requires.
            xb = x2.to(torch.bfloat16, copy=True)
            if self.mode == "int8":
                y = torch._weight_int8pack_mm(xb, self.qweight, self.scales)
            else:
                y = torch._weight_int4pack_mm_for_cpu(
                    xb, self.qweight, self.group_size, self.scales
                )
                y = y[:, : self.out_features]
            y = y.to(dtype)
        if self.bias is not None:
            y = y + self.bias.to(dtype)
        return y.reshape(*lead, self.out_features)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``W [N, K_pad]`` in ``dtype``, for the unfused path (int4: only off the CPU)."""
        if self.mode == "int8":
            return (self.qweight.to(dtype) * self.scales.to(dtype)[:, None]).to(dtype)
        if self.fused:
            raise RuntimeError("the CPU int4 packing is the kernel's own; it is not unpacked")
        n, k, g = self.out_features, self.padded_in, self.group_size
        codes = self.qweight.float().view(n, k // g, g)
        w = (codes - 8) * self.scales[..., 0:1] + self.scales[..., 1:2]
        return w.view(n, k).to(dtype)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.mode == "int4" else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"mode={self.mode}{group}, fused={self.fused}, bias={self.bias is not None}"
        )
