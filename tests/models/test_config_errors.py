"""A config we cannot run fails as a ``ValueError`` that says why, never as a bare ``KeyError``.

GPT-2 spells its fields ``n_head``/``n_embd``/``n_layer``: parsing it field by field used to stop
at ``KeyError: 'num_attention_heads'``, which reads like a bug of ours rather than "this
architecture is not supported". A supported architecture with a field missing names that field.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tests.model_factory import read_config
from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.core.runner import default_model_path
from vibe_sgl_lite.models import ModelConfig, load_model

pytestmark = pytest.mark.unit

UNSUPPORTED = r"unsupported architecture 'GPT2LMHeadModel'; supported: .*Qwen3ForCausalLM"


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny, random) GPT-2 checkpoint as transformers saves it, with the bundled model's
    tokenizer: a folder that is complete in every way except that we cannot run GPT-2."""
    out = tmp_path_factory.mktemp("gpt2")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_path() / name, out / name)
    vocab = len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"])
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=16, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(str(out))
    return out


def test_gpt2_config_is_the_shape_this_test_is_about(gpt2_dir: Path) -> None:
    # guards the premise: if transformers ever wrote num_attention_heads, the tests below would
    # no longer exercise the differently-spelled config
    cfg = read_config(gpt2_dir)
    assert cfg["architectures"] == ["GPT2LMHeadModel"]
    assert "n_head" in cfg and "num_attention_heads" not in cfg


def test_gpt2_config_is_an_unsupported_architecture(gpt2_dir: Path) -> None:
    with pytest.raises(ValueError, match=UNSUPPORTED):
        ModelConfig.from_dict(read_config(gpt2_dir))
    with pytest.raises(ValueError, match=UNSUPPORTED):
        ModelConfig.from_path(gpt2_dir)
    with pytest.raises(ValueError, match=UNSUPPORTED):
        load_model(gpt2_dir)


def test_model_runner_on_a_gpt2_folder_says_unsupported(gpt2_dir: Path) -> None:
    with pytest.raises(ValueError, match=UNSUPPORTED):
        ModelRunner(gpt2_dir, max_total_tokens=64)


@pytest.mark.parametrize(
    "field", ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"]
)
def test_supported_architecture_missing_a_required_field_names_it(
    tmp_path: Path, qwen3_dir: Path, field: str
) -> None:
    cfg: dict[str, Any] = read_config(qwen3_dir)
    assert field in cfg
    del cfg[field]
    with pytest.raises(ValueError, match=rf"Qwen3ForCausalLM.*required field.*'{field}'"):
        ModelConfig.from_dict(cfg)
    # the same through a folder and the runner
    model_dir = tmp_path / "m"
    shutil.copytree(qwen3_dir, model_dir)
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"required field.*'{field}'"):
        ModelRunner(model_dir, max_total_tokens=64)


def test_the_complete_config_still_parses(qwen3_dir: Path) -> None:
    """The checks refuse only what is missing: the untouched config still parses."""
    cfg = ModelConfig.from_dict(read_config(qwen3_dir))
    assert cfg.architecture == "Qwen3ForCausalLM" and cfg.num_attention_heads == 4
