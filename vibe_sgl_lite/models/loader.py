"""Load a Hugging Face model folder: ``config.json`` + ``*.safetensors`` -> our model class.

Tensors are read with safetensors' own API (memory-mapped, never pickle), one at a time, so peak
memory stays close to the size of the model itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.registry import get_model_class

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def iter_safetensors(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def load_model(
    model_dir: str | Path, dtype: str | torch.dtype = "float32", device: str = "cpu"
) -> tuple[nn.Module, ModelConfig]:
    """Build the registered class for ``model_dir`` and fill it with the checkpoint's weights."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    config = ModelConfig.from_model_dir(model_dir)
    cls = get_model_class(config.architecture)
    torch_dtype = resolve_dtype(dtype)
    with torch.device(device):
        model = cls(config)  # type: ignore[call-arg]
    model.to(dtype=torch_dtype)
    model.load_weights(iter_safetensors(model_dir))  # type: ignore[operator]
    return model.eval().requires_grad_(False), config
