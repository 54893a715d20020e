"""Tiny PEFT adapters, made by peft itself (``get_peft_model`` + ``save_pretrained``), on the
session's tiny Qwen3. ``init_lora_weights=False`` draws ``B`` at random too (peft's default
zeroes it), so every adapter changes the output; the tests assert it does.

Beside the fixtures, what every LoRA test builds the same way: peft's answer for one adapter
(``peft_as``, ``peft_logits``, ``peft_greedy``), greedy ``SamplingParams`` under an adapter
(``greedy``) and an engine serving every adapter (``lora_runner``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.model_factory import hf_greedy, load_hf
from vibe_sgl_lite import ModelRunner, SamplingParams

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS: dict[str, dict[str, Any]] = {
    "qv": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "all_rslora": dict(r=8, lora_alpha=16, target_modules=ALL, use_rslora=True),
    "mlp_o_k": dict(
        r=2, lora_alpha=32, target_modules=["k_proj", "o_proj", "gate_proj", "down_proj"]
    ),
}


def make_adapter(base_dir: Path, out_dir: Path, seed: int, **lora: Any) -> Path:
    """Save a random peft LoRA adapter for the model in ``base_dir`` to ``out_dir``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_hf(base_dir), LoraConfig(init_lora_weights=False, **lora))
    with torch.no_grad():  # larger B: the adapter moves the logits well past fp32 noise
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(4.0)
    model.save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="session")
def adapters(tmp_path_factory: pytest.TempPathFactory, qwen3_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: make_adapter(qwen3_dir, root / name, seed, **lora)
        for seed, (name, lora) in enumerate(ADAPTERS.items())
    }


@pytest.fixture(scope="session")
def peft_model(qwen3_dir: Path, adapters: dict[str, Path]) -> Any:
    """One PeftModel holding every adapter (``set_adapter`` picks, ``disable_adapter`` = base)."""
    from peft import PeftModel

    names = list(adapters)
    model = PeftModel.from_pretrained(load_hf(qwen3_dir), str(adapters[names[0]]), names[0])
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    return model.eval()


@contextmanager
def peft_as(model: Any, name: str | None) -> Iterator[Any]:
    """``model`` running adapter ``name`` (``None``: its base, adapters disabled)."""
    if name is None:
        with model.disable_adapter():
            yield model
    else:
        model.set_adapter(name)
        yield model


def peft_logits(model: Any, name: str | None, ids: list[int]) -> torch.Tensor:
    """peft's fp32 logits ``[len(ids), vocab]`` for ``ids`` under adapter ``name``."""
    with torch.no_grad(), peft_as(model, name) as m:
        return m(torch.tensor([ids])).logits[0].float()


def peft_greedy(model: Any, name: str | None, ids: list[int], max_tokens: int) -> list[int]:
    """peft's greedy continuation of ``ids`` under adapter ``name`` (no EOS stop)."""
    with peft_as(model, name) as m:
        return hf_greedy(m, ids, max_tokens)


def greedy(name: str | None, max_tokens: int) -> SamplingParams:
    """Greedy, ``max_tokens`` exactly (no EOS stop, as ``peft_greedy``), under adapter ``name``."""
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, lora_name=name)


def lora_runner(model_dir: Path, adapters: dict[str, Path], **settings: Any) -> ModelRunner:
    """An engine serving every adapter in ``adapters`` (2048 tokens of pages of 4 unless said)."""
    settings.setdefault("max_total_tokens", 2048)
    settings.setdefault("page_size", 4)
    paths = {name: str(path) for name, path in adapters.items()}
    return ModelRunner(model_dir, lora_paths=paths, **settings)
