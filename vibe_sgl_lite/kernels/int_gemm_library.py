"""One product op library (``int8_gemm.cpp``, ``gguf_gemm.cpp``, ``fp32_gemm.cpp``): built on
first use, its ops' output shapes told to ``torch.compile``, and the instruction sets its kernels
run here.

The two integer files pick their inner loop from the same list (``int_gemm_common.h``), so both
expose ``supported_isas()`` as ``ISA_NAMES``' indices; the float one has its own list. ``best_isa`` keeps its answer in a plain list, and
the build is skipped while ``torch.compile`` traces, so that a compiled decode step
(``models/decode_graph.py``) reads both and calls each product as one opaque op.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch

from vibe_sgl_lite.kernels.cpp_build import load_op_library

ISA_NAMES = ("scalar", "avx2", "avx_vnni", "avx512_vnni")  # index = the C++ Isa code
CAPPED_ISAS = {"avx2": ("avx2", "scalar"), "default": ("scalar",)}
"""The instruction sets allowed under each ``ATEN_CPU_CAPABILITY`` cap (torch's names)."""


class IntGemmLibrary:
    """``kernels/<stem>.cpp``'s ops as ``torch.ops.vibe_<stem>``; ``fakes`` maps each op's
    name to a function of its arguments returning an empty tensor of its output's shape;
    ``isa_names`` names the C++ file's instruction-set codes (index = code); ``cflags`` are
    extra compiler flags."""

    def __init__(
        self,
        stem: str,
        what: str,
        fakes: dict[str, Callable[..., torch.Tensor]],
        isa_names: tuple[str, ...] = ISA_NAMES,
        cflags: tuple[str, ...] = (),
    ):
        self.stem, self.what, self.fakes, self.isa_names = stem, what, fakes, isa_names
        self.cflags = list(cflags)
        self._best: list[str] = []  # filled on first use; a plain list, so torch.compile reads it

    @functools.cache
    def _build(self) -> None:
        """Build or load the op library (``kernels/cpp_build.py``); raises ``RuntimeError``."""
        load_op_library(self.stem, self.what, self.cflags)
        for name, fake in self.fakes.items():
            torch.library.register_fake(f"vibe_{self.stem}::{name}")(fake)

    def ops(self) -> Any:
        """The op namespace; built on first use, never while ``torch.compile`` traces."""
        if not torch.compiler.is_compiling():
            self._build()
        return getattr(torch.ops, f"vibe_{self.stem}")

    def supported_isas(self) -> list[str]:
        """The kernels' instruction sets this CPU runs, best first (``"scalar"`` always)."""
        return [self.isa_names[i] for i in self.ops().supported_isas()]

    def best_isa(self) -> str:
        """The instruction set the ops use by default on this CPU: the best it runs, unless
        torch's own ``ATEN_CPU_CAPABILITY`` is set to ``avx2`` or ``default``, which caps ours
        too (AVX2 / plain C++), so that one variable makes an AVX-512 machine run as an AVX2
        one (``docs/benchmarks.md`` measures that way)."""
        if not self._best:
            allowed = self.supported_isas()
            cap = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
            if cap in CAPPED_ISAS:
                allowed = [isa for isa in allowed if isa in CAPPED_ISAS[cap]]
            self._best.append(allowed[0])
        return self._best[0]

    def isa_code(self, isa: str | None) -> int:
        """The C++ code of ``isa`` (default: the best)."""
        return self.isa_names.index(isa or self.best_isa())
