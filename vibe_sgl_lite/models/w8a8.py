"""W8A8 linear layers: int8 weights *and* int8 activations, integer products.

Weight-only int8 (``models/quantization.py``: ``quantization="int8_weight_only"``) reads a
quarter of float32's bytes but still multiplies in floating point (bf16 on the CPU), and that
arithmetic, not the memory, bounded its batch-1 speed at about 1.25x float32. Here the input
rows are rounded to int8 too, each with its own scale, and the product runs on the CPU's integer
dot-product instructions (``kernels/int8_gemm.py``)::

    x [M, K]  ->  xq [M, K] int8, sx [M, K/64]  sx[m, g] = max_{k in g} |x[m, k]| / 127
    W [N, K]  ->  wq [N, K] int8, sw [N]        sw[n]    = max_k |W[n, k]| / 127   (at load)
    y[m, n]   =   (sum_g (sum_{k in g} xq[m, k] * wq[n, k]) * sx[m, g]) * sw[n]  (+ b[n])

The activation scales belong to one *row* (one per 64 of its inputs), never to the tensor: a
per-tensor scale would make a request's output depend on the other requests of its batch. With
per-row scales and a kernel that treats every row alike, a row's output is bitwise the same alone
or in any batch.

The weight numbers are the same per-channel symmetric int8 as weight-only int8
(``quantize_int8``); only the kernel and the rounding of the inputs differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vibe_sgl_lite.kernels.int8_gemm import int8_linear, pack_weight


class Int8Linear(nn.Module):
    """``y = x @ W.T + b`` with int8 inputs (scales per row and 64 inputs) and int8 weights (one
    scale per output channel).

    ``x: [..., in_features]`` in float32, bfloat16 or float16 -> ``[..., out_features]`` in the
    same dtype. Buffers: ``qweight``, on the CPU the kernel's packing of the int8 weight
    (``kernels/int8_gemm.pack_weight``: uint8 ``[N_pad / 16, K_pad / 4, 64]``), elsewhere the
    int8 ``[N, K]`` itself; ``scales`` float32 ``[N]``; ``bias`` float32 ``[N]`` or ``None``.

    Off the CPU (untested here) it dequantises the weight and calls ``F.linear``: weight-only.
    """

    def __init__(
        self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, in_features: int
    ) -> None:
        """``q``: int8 ``[N, K']`` with ``K' >= in_features`` (extra columns zero); ``scale``:
        ``[N]``, so that ``W ~= q * scale[:, None]``. Built on the device it will run on."""
        super().__init__()
        self.in_features, self.out_features = in_features, q.shape[0]
        self.packed = q.device.type == "cpu"
        q = q[:, :in_features]
        self.qweight: torch.Tensor
        self.scales: torch.Tensor
        self.bias: torch.Tensor | None
        self.register_buffer("qweight", pack_weight(q) if self.packed else q.contiguous())
        self.register_buffer("scales", scale.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed and x.dim() == 2:  # the model's [T, hidden] rows: no reshapes (measured
            return int8_linear(x, self.qweight, self.scales, self.bias)  # 12 us a call with them)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.packed:
            y = int8_linear(x2, self.qweight, self.scales, self.bias)
        else:
            w = self.qweight.to(x.dtype) * self.scales.to(x.dtype)[:, None]
            y = F.linear(x2, w, None if self.bias is None else self.bias.to(x.dtype))
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"mode=w8a8, bias={self.bias is not None}"
        )
