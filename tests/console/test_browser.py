"""The console in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by
Playwright, against the console of a real system served on 127.0.0.1.

A person signs in with the token and a name, reads the runs, opens a run's waterfall and
a span in it, edits and approves the waiting gate in the inbox, and sees the run finish;
everything a run carries shows as text (a `<script>` in it never runs). A screenshot of
every page is saved under the test's tmp_path. Skipped only without /usr/bin/chromium
(`python3 scripts/dev.py test` installs it).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from tests.console.conftest import TOKEN, XSS, Console

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Debian's chromium at {CHROMIUM} "
                                                     "(apt-get install chromium; scripts/dev.py "
                                                     "test installs it)"),
    # Chromium's first start took 34 s on a loaded machine (a few seconds when idle).
    pytest.mark.timeout(180),
]

NAME = "Ada Lovelace"


class Browsing(msgspec.Struct):
    """A browser page on the console at `base`; the dialogs it opened; where shots go."""

    page: Any
    base: str
    dialogs: list[str]
    shots: Path

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture
async def browsing(console: Console, tmp_path: Path) -> AsyncIterator[Browsing]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, timeout=120_000,
            args=["--no-sandbox"] if os.geteuid() == 0 else [])
        try:
            page = await browser.new_page()
            page.set_default_timeout(10_000)
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: dialogs.append(dialog.message))
            shots = tmp_path / "screenshots"
            shots.mkdir()
            yield Browsing(page, str(console.client.make_url("")).rstrip("/"), dialogs, shots)
        finally:
            await browser.close()


async def sign_in(browsing: Browsing) -> None:
    """Open the runs page; it sends the browser to sign in, then back to the runs."""
    page = browsing.page
    await page.goto(f"{browsing.base}/runs")
    assert page.url == f"{browsing.base}/login?next=/runs"
    await page.fill("#token", TOKEN)
    await page.fill("#name", NAME)
    await browsing.shot("01-login")
    await page.click("button:has-text('Sign in')")
    await page.wait_for_url(f"{browsing.base}/runs")
    assert await page.inner_text("header .who strong") == NAME


async def test_a_person_signs_in_reads_the_runs_and_opens_a_span_of_a_waterfall(
        browsing: Browsing) -> None:
    page = browsing.page
    await sign_in(browsing)
    rows = page.locator("table.runs tbody tr")
    await browsing.shot("02-runs")
    statuses = {(await row.locator("td").nth(0).inner_text()).strip():
                (await row.locator("td").nth(2).inner_text()).split()[0]
                for row in await rows.all()}
    assert statuses == {"done": "completed", "broken": "failed", "angry": "waiting"}

    await page.click("table.runs a:has-text('done')")
    await page.wait_for_url(f"{browsing.base}/runs/done")
    spans = page.locator("details.span")
    assert await spans.count() > 1
    span = spans.first
    assert not await span.evaluate("details => details.open")
    assert not await span.locator(".span-body").is_visible()
    await span.locator("summary").click()
    assert await span.evaluate("details => details.open")
    assert await span.locator(".span-body").is_visible()
    assert await span.locator(".span-body dt:has-text('Kind')").is_visible()

    result = page.locator("ol.steps li", has_text="draft").locator("details")
    await result.locator("summary").click()
    assert await result.locator("pre.data").is_visible()
    assert XSS in await result.locator("pre.data").inner_text()  # shown as text
    await browsing.shot("03-run-waterfall")
    await page.click("nav a:has-text('System')")
    await page.wait_for_url(f"{browsing.base}/system")
    assert await page.locator("ul.tree code").count() > 0  # the live supervision tree
    await browsing.shot("04-system")
    assert await page.locator("script").count() == 0
    assert browsing.dialogs == []


async def test_a_person_edits_and_approves_the_waiting_gate_and_the_run_finishes(
        console: Console, browsing: Browsing) -> None:
    page = browsing.page
    await sign_in(browsing)
    await page.click("nav a:has-text('Gates')")
    await page.wait_for_url(f"{browsing.base}/gates")
    assert f"No gates wait for {NAME}." in await page.inner_text("main")  # the person's own
    await page.fill("[name='assignee']", "support")  # and their group's
    await page.click("button:has-text('Show')")
    await page.wait_for_url(re.compile(r"/gates\?.*assignee=support"))
    gate = page.locator("section.gate", has_text="angry")
    assert await gate.locator("p.reason").is_visible()
    assert await gate.locator("p.reason").inner_text() == f"an angry customer {XSS}"
    assert await page.locator("script").count() == 0
    await browsing.shot("05-gates")

    await gate.locator("details.edit summary").click()
    body = gate.locator("[name='input.body']")
    assert await body.input_value() == "reply to an angry customer"  # the tool's argument
    await body.fill("Sorry for the trouble: it is fixed.")
    await gate.locator("[name='comment']").fill("softer tone")
    await browsing.shot("06-gate-edited")
    await gate.locator("button:has-text('Approve with these changes')").click()
    await page.wait_for_url(re.compile(r"/gates\?.*decided="))
    assert "Decided gate angry/send" in await page.inner_text("p.notice")
    await browsing.shot("07-gate-decided")

    with anyio.fail_after(10):
        outcome = await console.system.pipelines.outcome("angry", through_gates=True)
    assert outcome.status == "completed"
    await page.goto(f"{browsing.base}/runs/angry")
    assert await page.inner_text("h1 .status") == "completed"
    decided = page.locator("section.gate", has_text="send")
    assert f"edit by {NAME}" in await decided.locator("dd", has_text="edit").inner_text()
    await decided.locator("summary:has-text('The decided input')").click()
    assert "Sorry for the trouble: it is fixed." in await decided.locator("pre.data").last \
        .inner_text()
    await browsing.shot("08-run-completed")
    assert browsing.dialogs == []
