"""The UI in a real browser: Debian's chromium driven by Playwright, the app on 127.0.0.1 with the
embedded SmolLM2. The steps are ui/screenshots.py's (the script that writes the README's images);
screenshots go to this test's tmp directory (printed on failure)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ray_cluster import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Short, fictional; with W = 48 its middle (the designer, the tortoise) lies beyond the window.
DOCUMENT = (
    "Port Quillon is a small harbour town on a rocky northern coast. "
    "Its fishing fleet sails out before dawn and returns at noon. "
    "The lighthouse of Port Quillon was designed by Tobias Wrenfield in 1891. "
    "The keeper of the lighthouse keeps a pet tortoise named Marlowe. "
    "In winter the harbour freezes and the boats stay in their sheds. "
    "Visitors arrive by the coastal railway, which runs twice a day."
)
QUESTION = "What is the name of the pet tortoise of the lighthouse keeper?"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    from ui.screenshots import CHROMIUM, launch_browser

    if not Path(CHROMIUM).is_file():
        if os.environ.get("LIFT_RAY_REQUIRE_BROWSER"):  # CI installs chromium; a missing one is a failure there
            pytest.fail(f"no chromium at {CHROMIUM}")
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = launch_browser(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    import torch

    from lift_ray.config import build_config
    from lift_ray.infer import LiftEngine
    from ui.app import launch
    from ui.backends import LocalBackend

    torch.set_num_threads(2)
    # The small profile's budget (LoRA r16, rule QA, 3 + 5 epochs) on an 86-token document: 18 steps.
    cfg = build_config(None, {
        "segments": {"context_window": 48},
        "inference": {"max_new_tokens": 24},
        "store": {"uri": str(tmp_path_factory.mktemp("browser-store"))},
    })
    port = free_port()
    demo = launch(LocalBackend(LiftEngine.from_config(cfg)), port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_absorb_compare_niah_and_an_error_in_chromium(browser, app_url, tmp_path):
    from ui.app import DEFAULT_COMPARE
    from ui.screenshots import VIEWPORT, absorb_text, ask, error_message, show_niah

    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(app_url)
        # The progress bar shows stage, epoch and loss while training (absorb_text waits for it).
        status = absorb_text(page, DOCUMENT, "Quillon (browser test)", timeout_s=600, progress_shot=tmp_path / "absorbing.png")
        page.screenshot(path=str(tmp_path / "documents.png"), full_page=True)
        assert "absorbed" in status
        assert "Quillon (browser test)" in page.locator("#docs-table").inner_text()

        answers = ask(page, QUESTION, DEFAULT_COMPARE)
        page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
        assert set(answers) == set(DEFAULT_COMPARE)
        for mode, shown in answers.items():
            assert shown["answer"].strip(), f"{mode} shows no answer"
            assert "prompt tokens" in shown["stats"] and "tok/s" in shown["stats"]
        # Recall: the tortoise's name is beyond the window, so only the adapter can give it.
        assert "Marlowe" in answers["lift+icl"]["answer"] and "Marlowe" not in answers["icl"]["answer"]
        seen = page.locator("#document-view mark.lift-seen").all_inner_texts()
        unseen = page.locator("#document-view span.lift-unseen").inner_text()
        assert seen[0].startswith("Port Quillon") and "Marlowe" in unseen  # the fact lies beyond ICL's window

        page.locator("#question textarea, #question input").first.fill("")
        page.locator("#ask-btn").click()
        assert "Type a question first." in error_message(page, "Type a question first.")
        page.screenshot(path=str(tmp_path / "error.png"), full_page=True)

        show_niah(page)
        page.screenshot(path=str(tmp_path / "niah.png"), full_page=True)
        assert page.locator("#niah-table").inner_text().count("cardamom") > 0  # the shipped grid, nothing run
    finally:
        print(f"screenshots in {tmp_path}")
        page.close()
