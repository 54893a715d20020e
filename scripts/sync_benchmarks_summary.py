"""Copy the summary table of ``docs/benchmarks.md`` into the README's performance section.

``docs/benchmarks.md`` holds every measured figure with its command, machine and date; the
README shows its summary. Both carry the block between ``SUMMARY_START`` and ``SUMMARY_END``,
and ``tests/test_readme.py`` fails when they differ, so the README's numbers are always ones
the benchmarks document.

    python scripts/sync_benchmarks_summary.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
SUMMARY_START = "<!-- benchmarks summary: start -->"
SUMMARY_END = "<!-- benchmarks summary: end -->"
_BLOCK = re.compile(re.escape(SUMMARY_START) + r".*?" + re.escape(SUMMARY_END), re.S)


def summary_block(text: str) -> str:
    """The marked block of ``text``, markers included; ``ValueError`` when there is none."""
    match = _BLOCK.search(text)
    if match is None:
        raise ValueError(f"no block between {SUMMARY_START!r} and {SUMMARY_END!r}")
    return match.group(0)


def readme_links(block: str) -> str:
    """The block as the README shows it: links relative to ``docs/`` made relative to the root."""
    return re.sub(r"\]\((?!https?:|#)([^)]+)\)", r"](docs/\1)", block)


def main() -> None:
    block = readme_links(summary_block(BENCHMARKS.read_text()))
    readme = README.read_text()
    summary_block(readme)  # the README must already have the markers
    README.write_text(_BLOCK.sub(lambda _: block, readme))
    print(f"README.md: summary copied from {BENCHMARKS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
