"""The research layer: sparse attention methods, token pruning and score capture, beside the core.

``build_research_layer`` returns ``None`` for an engine with dense attention and no pruning, and
the engine then runs none of this package's code; otherwise the engine hands its plain attention
backend to a ``ResearchLayer``, runs the model on the layer's wrapping backend
(``kernels/sparse/backend.py``) and calls ``after_sample`` once per step.
"""

from vibe_sgl_lite.research.layer import (
    DENSE_STATS,
    MethodSpec,
    ResearchLayer,
    build_research_layer,
)

__all__ = ["DENSE_STATS", "MethodSpec", "ResearchLayer", "build_research_layer"]
