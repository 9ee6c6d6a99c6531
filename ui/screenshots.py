"""Drive the real app in Debian's chromium: the README's screenshots, and the browser test's steps.

    python -m ui.screenshots [--out docs/ui] [--context-window 128] [--store URI] [--threads N]

starts the app on 127.0.0.1 with the embedded model, absorbs the shipped sample document through
the Documents tab (cached in the store after the first run), asks one of its questions beyond the
window in the Compare tab, and writes ``compare.png`` and ``niah.png``. The browser test
(tests/test_ui_browser.py) runs the same steps on a short document. Playwright's Python package
drives the system's chromium through ``executable_path``; no browser is downloaded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

from lift_ray.modes import MODE_TITLES

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("LIFT_RAY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1000}
# The sample question the README screenshot asks: its answer lies beyond a 128-token window.
SCREENSHOT_QUESTION = "Who designed the lighthouse of Port Quillon?"


def _slug(mode: str) -> str:
    from ui.app import slug

    return slug(mode)


def launch_browser(playwright):
    """Headless Debian chromium through Playwright (never `playwright install`)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


# What the progress bar shows while training ("segments+QA · epoch 3/8 · loss 0.412").
TRAINING_PROGRESS = re.compile(r"\S+ · epoch \d+/\d+ · loss \d+\.\d+")


def absorb_text(
    page, text: str | None, title: str | None, *, timeout_s: float = 900, progress_shot: Path | None = None
) -> str:
    """Documents tab: paste ``text`` (None keeps the preloaded sample), absorb, wait; returns the status line.

    With ``progress_shot``, first waits for the progress bar to show a training step and screenshots it there.
    """
    open_tab(page, "Documents")
    if text is not None:
        page.locator("#doc-text textarea").fill(text)
    if title is not None:
        page.locator("#doc-title textarea, #doc-title input").first.fill(title)
    page.locator("#absorb-btn").click()
    if progress_shot is not None:
        page.get_by_text(TRAINING_PROGRESS).first.wait_for(timeout=timeout_s * 1000)
        page.screenshot(path=str(progress_shot), full_page=True)
    status = page.locator("#absorb-status")
    status.filter(has_text="absorbed").or_(status.filter(has_text="already in the store")).wait_for(timeout=timeout_s * 1000)
    return status.inner_text()


def ask(page, question: str, modes: tuple[str, ...], *, timeout_s: float = 300) -> dict[str, dict[str, str]]:
    """Compare tab: ask ``question`` about the selected document; wait until every mode's panel has finished.

    Returns:
        mode -> {"answer", "stats"} as the page shows them.
    """
    open_tab(page, "Compare")
    page.locator("#question textarea, #question input").first.fill(question)
    page.locator("#ask-btn").click()
    out = {}
    for mode in modes:
        stats = page.locator(f"#stats-{_slug(mode)}")
        stats.filter(has_text="prompt tokens").wait_for(timeout=timeout_s * 1000)
        out[mode] = {
            "answer": page.locator(f"#answer-{_slug(mode)} textarea").input_value(),
            "stats": stats.inner_text(),
        }
    return out


def error_message(page, text: str, *, timeout_s: float = 30) -> str:
    """Wait for an error toast holding ``text``; returns its text."""
    toast = page.get_by_text(text, exact=False).first
    toast.wait_for(timeout=timeout_s * 1000)
    return toast.inner_text()


def show_niah(page, *, timeout_s: float = 60) -> None:
    """NIAH tab: wait until the heatmap image has loaded."""
    open_tab(page, "NIAH")
    image = page.locator("#niah-heatmap img")
    image.wait_for(state="visible", timeout=timeout_s * 1000)
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=image.element_handle(), timeout=timeout_s * 1000)


def main(argv: list[str] | None = None) -> int:
    import torch
    from playwright.sync_api import sync_playwright

    from lift_ray.config import build_config
    from lift_ray.infer import LiftEngine
    from ui.app import DEFAULT_COMPARE, launch
    from ui.backends import LocalBackend

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "docs" / "ui"), help="where compare.png and niah.png go")
    parser.add_argument("--context-window", type=int, default=128, help="W of the head+tail view")
    parser.add_argument("--store", help="store URI (default: $LIFT_RAY_STORE or the cache)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--question", default=SCREENSHOT_QUESTION)
    parser.add_argument("--absorb-timeout", type=float, default=3600, help="seconds to wait for the absorb (default: 3600)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides: dict = {"segments": {"context_window": args.context_window}, "inference": {"max_new_tokens": 32}}
    if args.store:
        overrides["store"] = {"uri": args.store}
    engine = LiftEngine.from_config(build_config(None, overrides))
    demo = launch(LocalBackend(engine), port=args.port, block=False, quiet=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = launch_browser(p)
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"http://127.0.0.1:{args.port}/")
            print(absorb_text(page, None, None, timeout_s=args.absorb_timeout), file=sys.stderr)
            answers = ask(page, args.question, DEFAULT_COMPARE)
            for mode, shown in answers.items():
                print(f"{MODE_TITLES[mode]}: {shown['answer']!r} ({shown['stats']})", file=sys.stderr)
            page.screenshot(path=str(out / "compare.png"), full_page=True)
            show_niah(page)
            page.screenshot(path=str(out / "niah.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {out / 'compare.png'} and {out / 'niah.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
