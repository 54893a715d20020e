"""Tiny PEFT adapters, made by peft itself (``get_peft_model`` + ``save_pretrained``), on the
session's tiny Qwen3. ``init_lora_weights=False`` draws ``B`` at random too (peft's default
zeroes it), so every adapter changes the output; the tests assert it does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.model_factory import load_hf

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
