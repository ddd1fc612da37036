"""The dashboard in Debian's headless Chromium (`apt install chromium`), driven by Playwright
through `executable_path`: what a person sees, for the browser test and the page's picture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
# No sandbox (CI runs as root); nothing fetched but the page (the machine has no other network).
ARGUMENTS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


@dataclass
class Opened:
    page: Page
    console_errors: list[str] = field(default_factory=list)


@asynccontextmanager
async def opened(url: str, width: int = 1400, height: int = 1000) -> AsyncIterator[Opened]:
    """The page open in headless Chromium, its console's errors collected as they come."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGUMENTS)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            found = Opened(page)
            page.on(
                "console",
                lambda message: found.console_errors.append(message.text) if message.type == "error" else None,
            )
            page.on("pageerror", lambda error: found.console_errors.append(str(error)))
            await page.goto(url)
            yield found
        finally:
            await browser.close()


async def picture(url: str, path: Path, settle_ms: int = 4000) -> list[str]:
    """A full-page screenshot once the live parts have come in; returns the console's errors."""
    async with opened(url) as found:
        await found.page.wait_for_timeout(settle_ms)
        path.parent.mkdir(parents=True, exist_ok=True)
        await found.page.screenshot(path=str(path), full_page=True)
        return found.console_errors
