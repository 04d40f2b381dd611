"""The browser the console's tests drive: Debian's chromium through Playwright (never a
downloaded browser), one per module, a fresh context per test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Set to a folder (docs/) to keep a screenshot of each page there.
SHOTS = os.environ.get("AIOS_CONSOLE_SCREENSHOTS")


def shot(page: Page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("the console tests need Debian's chromium: apt-get install chromium")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors: list[str] = []
    opened.on("pageerror", lambda e: errors.append(str(e)))
    # A refused API call is logged by the browser too; the tests check those statuses.
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" and
              not m.text.startswith("Failed to load resource") else None)
    yield opened
    context.close()
    assert dialogs == [], "a script from the data ran"
    assert errors == [], "the page met errors"
