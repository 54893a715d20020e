"""Render the radix tree of a real run: ``docs/images/radix_tree.{dot,png}`` and an ASCII view.

Builds a tiny random Qwen3 with the test suite's fixture tokenizer, runs a small workload through
``ModelRunner(..., page_size=4)`` and renders ``runner.engine.cache`` at a moment when some
requests have finished and two are still running (their paths are locked):

1. wave 1 (finished): two questions behind one shared system prompt, plus an unrelated prompt;
2. wave 2 (running, two steps in): a follow-up turn that extends the first request's prompt
   *and its generated tokens*, and a third question behind the system prompt.

    python scripts/render_radix_tree.py                 # writes docs/images/radix_tree.*
    python scripts/render_radix_tree.py --out /tmp/x    # elsewhere

The PNG needs Graphviz's ``dot`` on the PATH (only for this picture; the project does not depend
on it). Without it the script still writes the ``.dot`` file and prints the ASCII tree.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.model_factory

SYSTEM = "ROMEO: But soft, what light through yonder window breaks? "
WAVE_1 = [SYSTEM + "JULIET: O Romeo.", SYSTEM + "Explain KV caches:", "Once upon a time"]
FOLLOW_UP = " The quick brown fox"
WAVE_2_QUESTION = SYSTEM + "def forward(self, x):"
MAX_TOKENS = 4


def ascii_tree(cache: object, decode: Callable[[Sequence[int]], str], width: int = 44) -> str:
    """One line per node: tokens, pages, lock_ref and the edge's text (elided past ``width``)."""
    from vibe_sgl_lite.cache import RadixCache, RadixNode

    assert isinstance(cache, RadixCache)
    lines = [f"root  (lock_ref={cache.root.lock_ref})"]

    def visit(node: RadixNode, indent: str) -> None:
        children = list(node.children.values())
        for i, child in enumerate(children):
            last = i == len(children) - 1
            text = decode(child.key)
            if len(text) > width:
                text = text[: width - 3] + "..."
            lock = f"  LOCKED x{child.lock_ref}" if child.lock_ref else ""
            lines.append(
                f"{indent}{'└── ' if last else '├── '}{text!r}  "
                f"[{len(child.key)} tokens, pages {child.pages}]{lock}"
            )
            visit(child, indent + ("    " if last else "│   "))

    visit(cache.root, "")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default_out = Path(__file__).resolve().parent.parent / "docs" / "images"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()

    from tests.model_factory import build_qwen3, build_tokenizer
    from vibe_sgl_lite import ModelRunner, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_qwen3(Path(tmp) / "model", build_tokenizer(Path(tmp) / "tok"))
        with ModelRunner(model_dir, page_size=4, max_total_tokens=512) as runner:
            engine = runner.engine
            assert engine is not None
            tok = engine.tokenizer
            first = runner.generate_outputs(WAVE_1, params)
            for prompt, out in zip(WAVE_1, first):
                print(f"wave 1: {prompt!r} -> {out.token_ids}, {out.num_cached_tokens} cached")
            turn_2 = first[0].prompt_token_ids + first[0].token_ids + tok.encode(FOLLOW_UP)
            running = [
                engine.add_request(turn_2, params),
                engine.add_request(WAVE_2_QUESTION, params),
            ]
            engine.step()
            engine.step()
            for req in running:
                print(
                    f"wave 2 (running): {len(req.prompt_ids)} prompt tokens, "
                    f"{req.num_cached_tokens} from the cache, {req.num_output_tokens} generated"
                )

            def decode(ids: Sequence[int]) -> str:
                """Text of each token; ``<id>`` for the byte soup a random model generates."""
                pieces = [str(tok.decode([t])) for t in ids]
                return "".join(
                    p if p.isprintable() and "\ufffd" not in p else f"<{t}>"
                    for t, p in zip(ids, pieces)
                )

            cache = engine.cache
            dot = cache.to_dot(decode=decode)
            tree = ascii_tree(cache, decode)
            stats = runner.get_stats()
            for req in running:
                engine.abort(req)

    args.out.mkdir(parents=True, exist_ok=True)
    dot_path = args.out / "radix_tree.dot"
    dot_path.write_text(dot)
    print(
        f"\npage_size=4; num_evictable_pages={stats['num_evictable_pages']} (held only by the tree); "
        f"cache_hit_rate={stats['cache_hit_rate']:.1%}\n"
    )
    print(tree)
    print(f"\nwrote {dot_path}")
    if shutil.which("dot"):
        png = args.out / "radix_tree.png"
        subprocess.run(["dot", "-Tpng", "-Gdpi=110", str(dot_path), "-o", str(png)], check=True)
        print(f"wrote {png}")
    else:
        print("graphviz `dot` not found: no PNG (render with `dot -Tpng radix_tree.dot`)")


if __name__ == "__main__":
    main()
