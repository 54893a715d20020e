"""Two LoRA adapters made with peft, served with the base model in one batch.

    python examples/lora.py

peft's ``get_peft_model`` + ``save_pretrained`` write two tiny random adapters for the bundled
model (a real fine-tune is saved the same way); one ``ModelRunner`` loads both, and one
``generate_outputs`` call runs the same prompt under the base, ``shout`` and ``whisper`` in the
same forward passes. Each line is then checked against peft's own model with that adapter.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.core.runner import default_model_path

BASE = default_model_path()


def make_adapter(folder: Path, seed: int, targets: list[str]) -> Path:
    """A random rank-8 adapter (``init_lora_weights=False``: B is not zero, so it matters)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(folder))
    return folder


with tempfile.TemporaryDirectory() as tmp:
    adapters = {
        "shout": make_adapter(Path(tmp) / "shout", 1, ["q_proj", "v_proj", "down_proj"]),
        "whisper": make_adapter(Path(tmp) / "whisper", 2, ["o_proj", "gate_proj", "up_proj"]),
    }
    prompt = "ROMEO:"
    names = [None, "shout", "whisper"]
    with ModelRunner(BASE, lora_paths={n: str(p) for n, p in adapters.items()}) as runner:
        ids = runner.tokenizer.encode(prompt)
        params = [SamplingParams(temperature=0, max_tokens=12, lora_name=n) for n in names]
        outputs = runner.generate_outputs([prompt] * 3, params)  # one batch, three adapters

    hf = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    peft = PeftModel.from_pretrained(hf, str(adapters["shout"]), "shout")
    peft.load_adapter(str(adapters["whisper"]), "whisper")
    for name, out in zip(names, outputs):
        if name is None:
            with peft.disable_adapter():
                ref = peft.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
        else:
            peft.set_adapter(name)
            ref = peft.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
        same = ref[0, len(ids) :].tolist() == out.token_ids
        print(f"{name or 'base':>8} ({'same as' if same else 'DIFFERENT from'} peft): {out.text!r}")
