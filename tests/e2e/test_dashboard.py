"""The dashboard in a real browser (Debian's headless Chromium, driven by Playwright): it opens,
follows claims sent by two provinces live over server-sent events, and its console stays clean.
Its door: only a loopback host name is answered, and it reads as the `dashboard` principal."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from gongji.dashboard.browser import opened
from gongji.ops.infra import child_environment, port_open
from shared.settings import Settings
from shared.topics import SETTLEMENTS, province_claims
from tests.e2e.world import World

pytestmark = pytest.mark.timeout(180)
PORT = 18091  # not the default: a dashboard a developer runs stays out of the way


@pytest.fixture
def dashboard(infrastructure: Settings, service_processes) -> Iterator[str]:
    log = (infrastructure.state_dir / "test-logs" / "dashboard.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "gongji", "dashboard", "--port", str(PORT)],
        env=child_environment(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while not port_open("127.0.0.1", PORT):
        assert process.poll() is None and time.monotonic() < deadline, "the dashboard did not start"
        time.sleep(0.2)
    yield f"http://127.0.0.1:{PORT}/"
    process.terminate()
    process.wait(timeout=15)


def settled_total(text: str | None) -> int:
    return int((text or "0").replace(",", "").replace("…", "0"))


async def test_the_page_follows_claims_from_two_provinces_live(world: World, kafka, dashboard: str) -> None:
    provider, recipient = await world.funded_family(provider_region="350100", quota_fen=200_000)
    async with opened(dashboard) as browser:
        page = browser.page
        # A function, not an expression: Playwright evals an expression again at every poll,
        # which the page's CSP (no 'unsafe-eval') refuses once the first check was false.
        await page.wait_for_function("() => document.getElementById('settled-total').textContent !== '…'")
        total = settled_total(await page.text_content("#settled-total"))
        cells = {pair: int(await page.get_attribute(f"#cell-{pair}", "data-count") or 0) for pair in ("35-44", "35-53")}
        # Care in Guangdong (44) and Yunnan (53), each sent on its province's own topic, paid by
        # the provider in Fujian (35).
        sent = [
            (province, world.claim_message(recipient, "510100", 1_000 + number, service_region=f"{province}0300"))
            for province in ("44", "53")
            for number in range(3)
        ]
        for province, claim in sent:
            await kafka.publish(province_claims(province), claim)
        results = await kafka.wait_for_each(SETTLEMENTS, "claim_id", {claim["claim_id"] for _, claim in sent})
        assert {result["status"] for result in results} == {"settled"}
        await page.wait_for_function(
            """([total, cells]) =>
                Number(document.getElementById('settled-total').textContent.replaceAll(',', '')) >= total + 6
                && Object.entries(cells).every(([pair, count]) =>
                    Number(document.getElementById('cell-' + pair).dataset.count) >= count + 3)""",
            arg=[total, cells],
            timeout=15_000,
        )
        assert await page.text_content("#connection") == "实时 live"
        assert browser.console_errors == []


def test_the_dashboard_answers_only_a_loopback_host_name(dashboard: str) -> None:
    request = urllib.request.Request(dashboard, headers={"Host": "dashboard.example.com"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)  # noqa: S310 - our own port
    assert refused.value.code == 400
    with urllib.request.urlopen(dashboard, timeout=5) as page:  # noqa: S310
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert "共济" in page.read().decode()
