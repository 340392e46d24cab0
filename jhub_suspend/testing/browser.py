"""Headless Chromium for the browser tests: Debian's chromium, driven by Playwright.

No browser is downloaded: Chromium is /usr/bin/chromium (``JHUB_SUSPEND_CHROMIUM``). If it or
Playwright is missing the test fails and says so; it never skips. Screenshots go to
``test-artifacts/``; with ``JHUB_SUSPEND_UPDATE_DOCS=1`` :func:`publish_screenshots` also copies
them to ``docs/screenshots/`` (a test run does not otherwise change tracked files).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = ROOT / "test-artifacts"
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = os.environ.get("JHUB_SUSPEND_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def async_playwright() -> Any:
    """Playwright's entry point, after checking that it and Chromium are there."""
    try:
        from playwright.async_api import async_playwright as entry
    except ImportError:
        pytest.fail("playwright is missing: install the test extras (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (no browser is downloaded)")
    return entry


async def login(
    browser: Any, hub_url: str, user: str, password: str, errors: list[str], width: int = 1100
) -> tuple[Any, Any]:
    """Log in to the hub in a new browser context; lands on the home page once it has logged in
    to the suspend service. Uncaught page errors are appended to ``errors``."""
    context = await browser.new_context(viewport={"width": width, "height": 680})
    context.set_default_timeout(60_000)
    page = await context.new_page()
    page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}\n{e.stack or ''}"))
    # next=home: without it the hub starts the user's server right after the login
    await page.goto(f"{hub_url}/hub/login?next=%2Fhub%2Fhome")
    await page.fill("#username_input", user)
    await page.fill("#password_input", password)
    await page.click("#login_submit")
    await page.wait_for_url("**/hub/home")
    # The home page logs in to the service once (a navigation through the hub's OAuth).
    await page.wait_for_selector("body[data-jhs-ready]")
    return context, page


async def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def publish_screenshots(*names: str) -> None:
    """With JHUB_SUSPEND_UPDATE_DOCS=1, copy these screenshots into docs/screenshots/."""
    if os.environ.get("JHUB_SUSPEND_UPDATE_DOCS") != "1":
        return
    DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        png = ARTIFACTS / f"{name}.png"
        if png.exists():  # a screenshot of a page already on its way elsewhere may be missing
            shutil.copy(png, DOCS_SCREENSHOTS / png.name)
