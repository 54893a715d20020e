"""Screenshot the live page after a two-turn chat: ``docs/images/server_page.png``.

Serves the bundled model on a free local port, opens ``/`` in a headless Chromium (Debian's
``chromium`` and ``chromium-driver``, as in ``tests/server_page``), sends two messages from the
chat box (greedy, so the picture is reproducible; the second turn reuses the first from the
prefix cache) and saves the page once its engine panel has caught up.

    python scripts/screenshot_page.py                  # writes docs/images/server_page.png
    python scripts/screenshot_page.py --out /tmp/x.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.server_page.browser

TURNS = ("Who art thou, and whence comest thou?", "Speak on: what news from Verona?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "server_page.png")
    args = parser.parse_args()

    from tests.server_page.browser import MISSING, chat, chromium, live_server, wait_for_panel
    from vibe_sgl_lite import ModelRunner
    from vibe_sgl_lite.server import create_app

    if MISSING:
        sys.exit(MISSING)
    with ModelRunner(max_total_tokens=4096) as runner:
        app = create_app(runner, "tiny-shakespeare")
        with live_server(app) as url, chromium(width=1280, height=820) as driver:
            driver.get(url + "/")
            wait_for_panel(driver)
            for message in TURNS:
                chat(driver, message, max_tokens=60)
            time.sleep(1.5)  # three panel refreshes: the tokens/s of the last turn, then idle
            driver.execute_script("window.scrollTo(0, 0)")  # typing scrolled to the chat box
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
