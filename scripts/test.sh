#!/usr/bin/env bash
# The project's whole check, as the README states it: install (the pinned toolchain of
# scripts/constraints.txt: CPU torch + dev extras), format and type checks, then the full test
# suite in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c scripts/constraints.txt torch==2.13.0
python -m pip install -q -c scripts/constraints.txt -e ".[dev,eval,router]"
# tests/server_page drives the live page in Debian's chromium. Installed with apt when missing
# (needs root and a Debian mirror); without it the browser test skips, except where
# VIBE_SGL_LITE_REQUIRE_BROWSER is set (.ci/run sets it), where it must run.
if ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
        && apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; then
        :
    elif [ -n "${VIBE_SGL_LITE_REQUIRE_BROWSER:-}" ]; then
        echo "error: chromium and chromium-driver are missing and apt-get could not install them" >&2
        exit 1
    else
        echo "note: no chromium/chromium-driver (apt-get needs root and a Debian mirror):" \
            "the browser test of the live page will be skipped" >&2
    fi
fi
python scripts/fetch_test_gguf.py > /dev/null  # the real GGUF of tests/models/test_gguf.py
# Build the CPU attention and float32 product kernels once, up front, instead of in whichever test
# process first needs them.
python -c "from vibe_sgl_lite.kernels.cpu_paged import kernel_op; kernel_op()"
python -c "from vibe_sgl_lite.kernels.fp32_gemm import supported_isas; supported_isas()"
python -m black --check -q vibe_sgl_lite tests benchmarks examples scripts
python -m isort --check -q vibe_sgl_lite tests benchmarks examples scripts
python -m mypy
lint-imports  # the layers contract in pyproject.toml: imports only point down
python -m pytest -n auto -q -p no:cacheprovider "$@"
