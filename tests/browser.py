"""Headless Chromium for the browser tests: Debian's system Chromium, driven by Playwright.

Playwright only drives it: no browser is ever downloaded (never ``playwright install``). ``.ci/run``
installs the ``chromium`` package when ``/usr/bin/chromium`` is missing; a machine without it fails
the test with the command to run, it never skips.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import ConsoleMessage, Dialog, Error, Page, async_playwright, expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
TIMEOUT_MS = 20_000  # generous: CI machines are small and busy; a passing wait returns at once
expect.set_options(timeout=TIMEOUT_MS)


@dataclass
class Browser:
    """One page in a fresh profile, with what the page reported (uncaught errors, console messages)."""

    page: Page
    page_errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    accept_dialogs: bool = True


def require_chromium(path: Path = CHROMIUM) -> None:
    """Fail (never skip) when the system Chromium is not installed, saying how to install it."""
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: the console tests need Debian's Chromium. Install it with "
            "`apt-get update && apt-get install -y --no-install-recommends chromium` (as .ci/run does)."
        )


@asynccontextmanager
async def chromium_page(extra_args: tuple[str, ...] = ()) -> AsyncIterator[Browser]:
    """A page in a new headless Chromium with an empty user-data-dir (``extra_args`` added to its command line).

    ``confirm()`` dialogs are answered by ``Browser.accept_dialogs`` and their messages recorded.
    """
    require_chromium()
    with tempfile.TemporaryDirectory(prefix="wicket-chromium-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, *extra_args]
            )
            try:
                context.set_default_timeout(TIMEOUT_MS)
                page = context.pages[0] if context.pages else await context.new_page()
                browser = Browser(page)

                def on_console(message: ConsoleMessage) -> None:
                    browser.console.append(f"{message.type}: {message.text}")

                def on_page_error(error: Error) -> None:
                    browser.page_errors.append(str(error))

                async def on_dialog(dialog: Dialog) -> None:
                    browser.dialogs.append(dialog.message)
                    await (dialog.accept() if browser.accept_dialogs else dialog.dismiss())

                page.on("console", on_console)
                page.on("pageerror", on_page_error)
                page.on("dialog", on_dialog)
                yield browser
            finally:
                await context.close()
