"""The files one default request passes through, as ``docs/request_lifecycle.md`` lists them.

A change that sends a plain ``generate`` through one more module (a plugin consulted for every
request, a research hook on the dense path) shows up here, and the doc must say why.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from trace_request_path import request_path  # noqa: E402

pytestmark = pytest.mark.integration


def documented_path() -> list[str]:
    doc = (ROOT / "docs" / "request_lifecycle.md").read_text()
    table = doc.split("<!-- request-path -->")[1].split("<!-- /request-path -->")[0]
    return re.findall(r"^\| \d+ \| `([^`]+)` \|", table, flags=re.MULTILINE)


def test_default_request_path_is_the_documented_one() -> None:
    traced = request_path("Once upon a time", 8)
    assert traced == documented_path()
    assert not any(f.startswith(("research/", "kernels/sparse/")) for f in traced)
    assert "sampling/plugins.py" not in traced
