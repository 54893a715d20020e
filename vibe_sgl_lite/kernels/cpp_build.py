"""Build a C++ op file beside this one with ``torch.utils.cpp_extension.load``, once per CPU kind.

The op is built on first use into torch's extension cache (``~/.cache/torch_extensions`` or
``$TORCH_EXTENSIONS_DIR``): 10-30 s once, then a cached load. Builds started by several processes
at once are serialised by the cache's lock file. A failed build raises ``RuntimeError``: the
caller asked for that path, so a silent fallback to a slower one would only hide the problem.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from pathlib import Path

BASE_CFLAGS = [
    "-O3",
    "-fopenmp",  # at::parallel_for is an OpenMP pragma in a header: compiled here
    "-fno-math-errno",  # lets the compiler vectorise exp() and friends
]


def cpu_tag() -> str:
    """A short hash of this CPU's feature flags: ``-march=native`` builds are only valid on it.

    It goes into the extension's name, so a home directory shared by machines with different
    CPUs keeps one build per CPU kind instead of loading one that raises SIGILL.
    """
    try:
        flags = next(
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = platform.processor() or platform.machine()
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


def load_op_library(stem: str, what: str, extra_cflags: list[str] | None = None) -> None:
    """Compile (or load from the cache) ``kernels/<stem>.cpp``, which registers its ops with
    ``TORCH_LIBRARY``; ``what`` names it in the one-line notice and in errors."""
    from torch.utils.cpp_extension import _get_build_directory, load

    source = Path(__file__).with_name(f"{stem}.cpp")
    name = f"vibe_sgl_lite_{stem}_{cpu_tag()}"
    if not (Path(_get_build_directory(name, verbose=False)) / f"{name}.so").exists():
        print(
            f"vibe-sgl-lite: compiling the C++ {what} for this CPU (once, ~20 s)...",
            file=sys.stderr,
            flush=True,
        )
    try:
        load(
            name=name,
            sources=[str(source)],
            extra_cflags=BASE_CFLAGS + (extra_cflags or []),
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    except Exception as exc:  # compiler missing, ninja missing, compile error, ...
        raise RuntimeError(
            f"could not build the {what} {source.name} "
            "(needs a C++17 compiler and ninja; see the error above)"
        ) from exc
