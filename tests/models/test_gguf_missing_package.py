"""Loading a ``.gguf`` file without the optional ``gguf`` package: one clear line, naming the fix.

``gguf`` is an extra (``pip install 'vibe-sgl-lite[gguf]'``), so a plain install meets this. The
package is hidden with ``sys.modules["gguf"] = None``, which makes ``import gguf`` raise exactly
as it does when the package is absent; the file itself is a valid tiny GGUF, so the only thing
that can go wrong is the missing package.
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.model_factory import build_llama
from tests.models.test_gguf import write_gguf
from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.cli import main
from vibe_sgl_lite.core.tokenizer import Tokenizer
from vibe_sgl_lite.models import ModelConfig, load_model
from vibe_sgl_lite.models.gguf import iter_gguf_tensors

pytestmark = pytest.mark.unit

INSTALL_HINT = "pip install 'vibe-sgl-lite[gguf]'"

# Every public way into a GGUF file.
LOADERS: dict[str, Callable[[Path], Any]] = {
    "ModelConfig.from_path": ModelConfig.from_path,
    "load_model": load_model,
    "iter_gguf_tensors": lambda p: next(iter_gguf_tensors(p)),
    "ModelRunner": lambda p: ModelRunner(p, page_size=4, max_total_tokens=64),
    "Tokenizer.from_pretrained": Tokenizer.from_pretrained,
}


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("gguf-missing")
    return write_gguf(build_llama(root / "hf", tokenizer_dir), root / "m.gguf", "llama")


def _single_line_error(call: Callable[[], Any]) -> str:
    with pytest.raises((ImportError, ValueError)) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("entry", list(LOADERS))
def test_missing_gguf_package_names_the_extra(
    gguf_file: Path, monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    # A copy per entry point: the metadata of a path already read is cached, and a cached read
    # would not need the package at all.
    path = gguf_file.with_name(f"{entry}.gguf")
    path.write_bytes(gguf_file.read_bytes())
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "gguf", None)
        message = _single_line_error(lambda: LOADERS[entry](path))
    assert INSTALL_HINT in message and "needs the 'gguf' package" in message, message
    # the same file loads once the package is back: it was the package, not the file
    assert ModelConfig.from_path(path).architecture == "LlamaForCausalLM"


def test_broken_gguf_package_is_not_reported_as_missing(
    gguf_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed ``gguf`` whose own imports fail (an old release under numpy 2, say) must not
    be reported as "not installed": "install it" would send the user the wrong way, so the
    message carries the real import error."""
    path = gguf_file.with_name("broken.gguf")
    path.write_bytes(gguf_file.read_bytes())
    real_import = builtins.__import__

    def import_with_broken_gguf(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "gguf":
            raise ModuleNotFoundError("No module named 'numpy.core._multiarray'", name="numpy")
        return real_import(name, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "__import__", import_with_broken_gguf)
        message = _single_line_error(lambda: ModelConfig.from_path(path))
    assert "failed to import" in message and "numpy.core._multiarray" in message, message
    assert "needs the 'gguf' package" not in message
    assert INSTALL_HINT in message


def test_missing_gguf_package_on_the_command_line(
    gguf_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = gguf_file.with_name("cli.gguf")
    path.write_bytes(gguf_file.read_bytes())
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "gguf", None)
        assert main(["generate", "--model", str(path), "hi", "--max-total-tokens", "64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and INSTALL_HINT in err, err
