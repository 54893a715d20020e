#!/usr/bin/env bash
# The project's whole check, as the README states it: install (CPU torch pin + dev extras),
# format and type checks, then the full test suite in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
command -v chromedriver >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)  # tests/server_page
python scripts/fetch_test_gguf.py > /dev/null  # the real GGUF of tests/models/test_gguf.py
# Build the CPU attention kernel once, up front, instead of in whichever test process first needs it.
python -c "from vibe_sgl_lite.kernels.cpu_paged import kernel_op; kernel_op()"
python -m black --check -q vibe_sgl_lite tests benchmarks examples scripts
python -m isort --check -q vibe_sgl_lite tests benchmarks examples scripts
python -m mypy
lint-imports  # the layers contract in pyproject.toml: imports only point down
python -m pytest -n auto -q -p no:cacheprovider "$@"
