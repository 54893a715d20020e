"""Linear layers that keep a GGUF file's own Q8_0 / Q4_1 (Q4_0) blocks: no requantisation.

A llama.cpp file already holds its matrices quantised, in blocks of 32 weights with their own
fp16 scales. Requantising those numbers into another layout (one int8 scale per row, or our int4
groups) rounds them a second time; multiplying them as stored keeps exactly the weights the file
(and llama.cpp) has, and reads no more bytes than the file. ``kernels/gguf_gemm.py`` does that
against activation rows rounded to int8 per block of 32, llama.cpp's own arithmetic::

    file block (Q4_1):  d fp16 | m fp16 | 32 x 4-bit q      w = d * q + m
    activation block:   dx, sx = dx * sum(xq) | 32 x int8 xq  (per row, on the fly)
    y += d * dx * sum(q * xq) + m * sx                     (int32 sum, then two fmas)

Which blocks a mode keeps (``KEPT_FORMATS``): ``"int8"`` keeps Q8_0; ``"int4"`` keeps Q4_0/Q4_1
and Q8_0 (a Q8_0 matrix in a 4-bit file is one llama.cpp's quantiser chose to keep at 8 bits:
the LM head of SmolLM2's Q4_1 file); ``"int8_weight_only"`` keeps none (its point is float
activations). Every other matrix is quantised from floats by its mode, as for a Hugging Face
folder (``models/quantize.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from vibe_sgl_lite.kernels.gguf_gemm import gguf_linear, pack_weight
from vibe_sgl_lite.models.quantization import QuantizedWeight

KEPT_FORMATS: dict[str, tuple[str, ...]] = {
    "int8": ("q8_0",),
    "int8_weight_only": (),
    "int4": ("q4_1", "q8_0"),
}
"""quantization mode -> the ``QuantizedWeight`` block modes it multiplies as stored."""


def kept_format(parts: list[QuantizedWeight | None], mode: str) -> str | None:
    """The block mode of a (possibly merged) layer's checkpoint ``parts`` if ``mode`` keeps them
    all as stored (every part present and of that one mode), else ``None``."""
    formats = {None if p is None else p.mode for p in parts}
    if len(formats) != 1:
        return None
    (fmt,) = formats
    return fmt if fmt in KEPT_FORMATS[mode] else None


class GGUFLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` in GGUF Q8_0 or Q4_1 blocks, on the CPU.

    ``x: [..., in_features]`` float32, bfloat16 or float16 -> ``[..., out_features]`` in the
    same dtype. Buffers: ``qweight`` the kernel's packing (``kernels/gguf_gemm.pack_weight``:
    uint8 ``[N_pad / 16, K / 32, 576 | 320]``), ``bias`` float32 ``[N]`` or ``None``.
    """

    def __init__(
        self, weight: QuantizedWeight, bias: torch.Tensor | None, in_features: int
    ) -> None:
        """``weight``: mode ``"q8_0"`` or ``"q4_1"``, ``[N, in_features]`` (GGUF rows are whole
        blocks, so ``in_features`` is a multiple of 32)."""
        super().__init__()
        if weight.shape[1] != in_features:
            raise ValueError(f"GGUF blocks of {weight.shape[1]} inputs for {in_features} inputs")
        self.fmt = weight.mode
        self.in_features, self.out_features = in_features, weight.shape[0]
        self.qweight: torch.Tensor
        self.bias: torch.Tensor | None
        packed = pack_weight(self.fmt, weight.q, weight.scale, weight.zero)
        self.register_buffer("qweight", packed)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # the model's [T, hidden] rows: no reshapes
            return gguf_linear(x, self.qweight, self.fmt, self.out_features, self.bias)
        y = gguf_linear(
            x.reshape(-1, self.in_features), self.qweight, self.fmt, self.out_features, self.bias
        )
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"format={self.fmt}, bias={self.bias is not None}"
        )
