"""Load a Hugging Face model folder: ``config.json`` + ``*.safetensors`` -> our model class.

(A llama.cpp ``.gguf`` file goes through the same steps; ``models/gguf.py`` supplies its config
and its dequantised tensors.) With ``quantization`` the loaded float model's linear layers are
then replaced by int8/int4 ones (``models/quantize.py``).

Tensors are read with safetensors' own API (memory-mapped, never pickle), one at a time, so peak
memory stays close to the size of the model itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from vibe_sgl_lite.config import DTYPES
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.decoder import DecoderForCausalLM
from vibe_sgl_lite.models.gguf import iter_gguf_tensors
from vibe_sgl_lite.models.layers import RotaryEmbedding
from vibe_sgl_lite.models.quantization import QuantizedWeight, Slot
from vibe_sgl_lite.models.quantize import quantization_targets, quantize_model
from vibe_sgl_lite.models.registry import get_model_class
from vibe_sgl_lite.models.weight_layout import (
    relayout_linear_weights,
    resolve_fp32_gemm_rows,
    resolve_weight_layout,
)
from vibe_sgl_lite.models.weights import PACKED


@contextmanager
def _no_normal_init_on_meta() -> Iterator[None]:
    """Within the block, ``nn.init.normal_`` leaves a ``meta`` tensor alone.

    The model is built on ``meta``, where values do not exist, yet ``nn.Embedding`` still runs
    ``normal_`` on its weight, and the meta version of ``normal_`` imports ``torch._dynamo`` on
    first use: 3 to 7 s in every fresh process that loads a model (each TP worker, the CLI, a
    server), for numbers the checkpoint overwrites anyway (transformers' ``no_init_weights``
    skips them too). Any other tensor, e.g. one another thread initialises meanwhile, is drawn
    as usual."""
    normal = torch.nn.init.normal_

    def normal_unless_meta(
        tensor: torch.Tensor,
        mean: float = 0.0,
        std: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return tensor if tensor.is_meta else normal(tensor, mean, std, generator)

    torch.nn.init.normal_ = normal_unless_meta
    try:
        yield
    finally:
        torch.nn.init.normal_ = normal


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint files: those named by ``model.safetensors.index.json``, else ``*.safetensors``."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / n for n in names]
        absent = [str(f.name) for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"shards listed in {index.name} are missing: {absent}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in model folder {model_dir}")
    return files


class LazyTensor:
    """A checkpoint tensor not read yet: ``narrow`` selects a slice, ``to``/``load`` read it.

    Tensor-parallel ranks narrow each tensor to their shard before reading, so a rank reads only
    its slices from disk (safetensors' ``get_slice``).
    """

    def __init__(self, source: Any, shape: tuple[int, ...], index: tuple[slice, ...] = ()) -> None:
        self.source, self.shape = source, torch.Size(shape)
        self.index = index or tuple(slice(0, n) for n in shape)

    def dim(self) -> int:
        return len(self.shape)

    def narrow(self, dim: int, start: int, length: int) -> LazyTensor:
        if not 0 <= start and start + length <= self.shape[dim]:
            raise ValueError(
                f"slice {start}:{start + length} out of range for dim {dim} {self.shape}"
            )
        base = self.index[dim].start
        index = list(self.index)
        index[dim] = slice(base + start, base + start + length)
        shape = list(self.shape)
        shape[dim] = length
        return LazyTensor(self.source, tuple(shape), tuple(index))

    def load(self) -> torch.Tensor:
        tensor: torch.Tensor = self.source[self.index] if self.index else self.source[:]
        return tensor

    def to(self, dtype: torch.dtype) -> torch.Tensor:
        return self.load().to(dtype)


def iter_safetensors(model_dir: Path) -> Iterator[tuple[str, LazyTensor]]:
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                sliced = f.get_slice(name)
                yield name, LazyTensor(sliced, tuple(sliced.get_shape()))


def _num_tensors(model_dir: Path) -> int:
    """Tensors in the checkpoint, from the files' headers (no tensor is read)."""
    count = 0
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            count += len(f.keys())
    return count


def _slot(hf_name: str, targets: Collection[str]) -> Slot | None:
    """Where checkpoint weight ``hf_name`` lands if that layer is to be quantised, else ``None``.

    ``model.layers.0.self_attn.k_proj.weight`` -> ``("layers.0.self_attn.qkv_proj", 1)``: the
    decoder's ``model.`` prefix dropped and the q/k/v, gate/up projections merged (``PACKED``)."""
    module, _, leaf = hf_name.removeprefix("model.").rpartition(".")
    parent, _, proj = module.rpartition(".")
    shard = 0
    if proj in PACKED:
        merged, shard = PACKED[proj]
        module = f"{parent}.{merged}"
    return (module, shard) if leaf == "weight" and module in targets else None


def _set_aside_quantized(
    weights: Iterator[tuple[str, Any]],
    targets: Collection[str],
    kept: dict[Slot, QuantizedWeight],
    dtype: torch.dtype,
    tied: bool,
) -> Iterator[tuple[str, Any]]:
    """Pass ``weights`` on, moving each already-quantised one (GGUF blocks) into ``kept``.

    The generic loader still checks that every float parameter is written, so such a weight
    leaves a placeholder of its shape behind (zeros, stride 0: nothing is dequantised), which
    ``quantize_model`` discards with the float layer. One that lands outside the quantised layers
    (a Q8_0 embedding) is dequantised to ``dtype`` as usual; with ``tied`` embeddings its blocks
    are also kept for the LM head, which multiplies the same matrix."""
    for name, tensor in weights:
        if isinstance(tensor, QuantizedWeight):
            slot = _slot(name, targets)
            if slot is None:
                if tied and name == "model.embed_tokens.weight" and "lm_head" in targets:
                    kept[("lm_head", 0)] = tensor
                tensor = tensor.dequantize(dtype)
            else:
                kept[slot] = tensor
                tensor = torch.zeros((), dtype=dtype).expand(tensor.shape)
        yield name, tensor


def load_model(
    model_dir: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    shard: Callable[[DecoderForCausalLM], None] | None = None,
    progress: bool | None = None,
    quantization: str | None = None,
    weight_layout: str = "auto",
    fp32_gemm_max_rows: int | None = None,
) -> tuple[DecoderForCausalLM, ModelConfig]:
    """Build the registered class for ``model_dir`` and fill it with the checkpoint's weights.

    ``model_dir`` is a Hugging Face folder or a llama.cpp ``.gguf`` file (dequantised to ``dtype``
    while loading, see ``models/gguf.py``).

    The model is built on the ``meta`` device (no memory), cut in place by ``shard`` (tensor
    and expert parallelism: ``distributed.tensor_parallel.shard_model`` for one rank), then
    materialised on ``device`` and loaded tensor by tensor.

    ``progress`` shows a bar over the tensors on stderr: ``None`` (default) only when stderr is a
    terminal and the load takes over a second (a big model read from disk), so logs and tests
    stay clean; ``True`` always, ``False`` never.

    ``quantization`` (``"int8"``: W8A8, ``"int8_weight_only"``, ``"int4"``) replaces the linear
    layers by quantised ones (the LM head: W8A8 int8) once the float weights are in
    (``models/quantize.py``). From a GGUF file, the Q8_0 (int8, int4) and Q4_0/Q4_1 (int4)
    matrices keep the file's own blocks (``models/gguf_linear.py``) rather than re-rounding
    their dequantised floats; every other case quantises the loaded floats.

    ``weight_layout`` stores the float linear weights row- or column-major at the end
    (``models/weight_layout.py``; ``"auto"``: column-major for float32 on CPU, where small-batch
    products run up to 2x faster); ``fp32_gemm_max_rows`` then sends products of that many rows
    or fewer to our float32 loop (``None``: the machine's default; ``resolve_fp32_gemm_rows``).
    """
    model_dir = Path(model_dir)
    config = ModelConfig.from_path(model_dir)  # a folder or a .gguf file; errors otherwise
    cls = get_model_class(config.architecture)
    torch_dtype = resolve_dtype(dtype)
    with torch.device("meta"), _no_normal_init_on_meta():
        model = cls(config)
    if shard is not None:
        shard(model)
    model.to_empty(device=device)
    model.to(dtype=torch_dtype)
    model.tie_weights()
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.build()
    targets = quantization_targets(model) if quantization is not None else {}
    kept: dict[Slot, QuantizedWeight] = {}
    weights: Iterator[tuple[str, Any]]
    total = None
    if model_dir.is_dir():
        weights, total = iter_safetensors(model_dir), _num_tensors(model_dir)
    else:
        gguf_weights = iter_gguf_tensors(model_dir, torch_dtype, keep_blocks=bool(targets))
        tied = config.tie_word_embeddings
        weights = _set_aside_quantized(gguf_weights, targets, kept, torch_dtype, tied)
    disable, delay = (None, 1.0) if progress is None else (not progress, 0.0)
    bar = tqdm(weights, "Loading weights", total, unit=" tensors", disable=disable, delay=delay)
    with bar:
        model.load_weights(bar)
    if quantization is not None:
        quantize_model(model, quantization, prequantized=kept)
    layout = resolve_weight_layout(weight_layout, torch.device(device), torch_dtype)
    fp32_gemm_rows = resolve_fp32_gemm_rows(
        fp32_gemm_max_rows, layout, torch.device(device), torch_dtype
    )
    relayout_linear_weights(model, layout, fp32_gemm_rows)
    return model.eval().requires_grad_(False), config
