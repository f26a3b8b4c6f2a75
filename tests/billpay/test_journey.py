"""The Bill Pay app's whole user journey in Debian's Chromium, against real processes.

A real ``payhub serve --sandbox`` (own PAYHUB_HOME, own database, simulators on free ports) and the app
(``python -m payhub_billpay``) run as child processes; Playwright drives /usr/bin/chromium. Every page
is screenshotted into the artifact directory (printed) and checked with axe-core: no serious or
critical violation anywhere.

Needs: chromium (``make deps-system``) and axe-core (``make deps-node``: npm into tests/billpay/node_modules),
which come from apt and npm: where they cannot be installed the test skips, saying which. The Python
packages (playwright, pyotp, the SDK) are dev dependencies: a missing one is an error, not a skip.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from playwright import async_api as playwright_api

from tests.support.processes import (
    REPO,
    config_with_free_sandbox_ports,
    free_port,
    payhub_env,
    start_payhub,
    wait_ready,
)

HERE = Path(__file__).resolve().parent
APP_DIR = REPO / "examples" / "billpay"
AXE = HERE / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = Path(os.environ.get("BILLPAY_ARTIFACTS", REPO / "var" / "test-artifacts" / "billpay"))
USER, PASSWORD, PHONE = "lilei", "correct horse battery", "+8613800138123"
CARD = "4111111111111111"


def chromium_path() -> str | None:
    for name in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if name and Path(name).exists():
            return name
    return None


@pytest.fixture(scope="session")
def axe_script() -> Path:
    """axe-core from the npm registry, installed next to this file (idempotent, like `make deps-node`)."""
    if not AXE.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("axe-core is not installed and there is no npm (run `make deps-node`)")
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0 or not AXE.exists():
            pytest.skip(f"npm could not install axe-core: {result.stderr.strip()[-300:]}")
    return AXE


@pytest.fixture(scope="session")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed (run `make deps-system` as root)")
    return path


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


class Stack:
    def __init__(
        self, app_url: str, messages_url: str, logs: Path, hub_url: str = "", home: Path | None = None
    ) -> None:
        self.app_url = app_url
        self.messages_url = messages_url
        self.logs = logs
        self.hub_url = hub_url  # the tenant's back office calls the hub directly (refunds)
        self.home = home


@pytest.fixture
async def stack(payhub_home: Path, db_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    config = config_with_free_sandbox_ports(tmp_path)
    messages_port = int(re.search(r"(?m)^messages = (\d+)", config.read_text()).group(1))  # type: ignore[union-attr]
    api_port, ops_port, app_port = free_port(), free_port(), free_port()
    env = payhub_env(
        PAYHUB_HOME=str(payhub_home),
        PAYHUB_DATABASE_URL=db_url,
        PAYHUB_LISTEN=f"127.0.0.1:{api_port}",
        PAYHUB_OPS_LISTEN=f"127.0.0.1:{ops_port}",
        PAYHUB_CONFIG=str(config),
    )
    hub = start_payhub("serve", "--sandbox", env=env, stdout=tmp_path / "hub.log")
    app: subprocess.Popen[bytes] | None = None
    try:
        await wait_ready(ops_port, deadline=90)
        app = start_app(env, app_port, api_port, payhub_home, tmp_path)
        app_url = f"http://127.0.0.1:{app_port}"
        await wait_http(app_url + "/login", app, tmp_path / "app.log")
        print(f"\nhub log: {tmp_path / 'hub.log'}\napp log: {tmp_path / 'app.log'}")
        yield Stack(
            app_url,
            f"http://127.0.0.1:{messages_port}",
            tmp_path,
            f"https://localhost:{api_port}",
            payhub_home,
        )
    finally:
        for process in (app, hub):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


def start_app(
    env: dict[str, str], app_port: int, api_port: int, payhub_home: Path, tmp_path: Path
) -> subprocess.Popen[bytes]:
    """The app as `python -m payhub_billpay` from its source tree (installed or not), on its own data dir."""
    app_env = dict(env, PYTHONPATH=os.pathsep.join([str(APP_DIR), env.get("PYTHONPATH", "")]))
    args = ["--port", str(app_port), "--hub-url", f"https://localhost:{api_port}"]
    args += [
        "--payhub-home",
        str(payhub_home),
        "--data-dir",
        str(tmp_path / "billpay"),
        "--start-hub",
        "never",
    ]
    with (tmp_path / "app.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "payhub_billpay", *args],
            cwd=REPO,
            env=app_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, deadline: float = 30) -> None:
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < deadline:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{tail(log)}")
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    pytest.fail(f"the app did not answer:\n{tail(log)}")


async def latest_otp(messages_url: str, phone: str, after: int, deadline: float = 15) -> str:
    """The code in the newest SMS to ``phone`` beyond the first ``after`` messages (the sandbox's sink)."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < deadline:
            async with session.get(f"{messages_url}/messages", params={"to": phone}) as resp:
                messages = await resp.json()
            if len(messages) > after:
                match = re.search(r"\b(\d{6})\b", messages[-1]["body"])
                assert match, messages[-1]
                return match.group(1)
            await asyncio.sleep(0.2)
    pytest.fail(f"no OTP message to {phone}")


async def message_count(messages_url: str, phone: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{messages_url}/messages", params={"to": phone}) as resp,
    ):
        return len(await resp.json())


class Checker:
    """Screenshots and axe-core results of every page visited."""

    def __init__(self, page: Any, axe: Path, artifacts: Path) -> None:
        self.page = page
        self.axe = axe
        self.artifacts = artifacts
        self.results: list[tuple[str, Path, dict[str, int], list[str]]] = []

    async def check(self, name: str) -> None:
        await self.page.wait_for_load_state("load")
        shot = self.artifacts / f"{len(self.results) + 1:02d}-{name}.png"
        await self.page.screenshot(path=str(shot), full_page=True)
        await self.page.add_script_tag(path=str(self.axe))
        violations = await self.page.evaluate(
            "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
            ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help}))"
        )
        counts: dict[str, int] = {}
        bad = []
        for v in violations:
            counts[v["impact"] or "unknown"] = counts.get(v["impact"] or "unknown", 0) + 1
            if v["impact"] in ("serious", "critical"):
                bad.append(f"{v['id']} ({v['impact']}, {v['nodes']} nodes): {v['help']}")
        self.results.append((name, shot, counts, bad))

    def report(self) -> None:
        print("\nBill Pay journey: screenshots and axe-core results")
        for name, shot, counts, _bad in self.results:
            summary = ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none"
            print(f"  {name:<22} violations: {summary:<40} {shot}")

    def assert_clean(self) -> None:
        problems = [f"{name}: {b}" for name, _shot, _counts, bad in self.results for b in bad]
        assert not problems, "axe-core serious/critical violations:\n" + "\n".join(problems)


async def test_bill_pay_journey(stack: Stack, chromium: str, axe_script: Path, artifacts: Path) -> None:
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            # bypass_csp: the app's CSP forbids inline scripts, and axe is injected as one.
            context = await browser.new_context(bypass_csp=True, viewport={"width": 1200, "height": 900})
            page = await context.new_page()
            page.set_default_timeout(30_000)
            checker = Checker(page, axe_script, artifacts)
            try:
                await journey(page, checker, stack)
            finally:
                checker.report()
                await context.close()
            checker.assert_clean()
        finally:
            await browser.close()


async def journey(page: Any, checker: Checker, stack: Stack) -> None:
    expect = playwright_api.expect
    base = stack.app_url

    # 1. Sign up and enroll TOTP (the code computed from the key shown beside the QR code).
    await page.goto(f"{base}/signup")
    await checker.check("signup")
    await page.get_by_label("Username").fill(USER)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_label("Mobile phone").fill(PHONE)
    await page.get_by_role("button", name="Sign up").click()
    await expect(page).to_have_url(re.compile(r"/enroll$"))
    await checker.check("enroll-totp")
    secret = await page.locator("#totp-secret").get_attribute("data-secret")
    totp = pyotp.TOTP(secret)
    await page.get_by_label("Authenticator code").fill(totp.now())
    await page.get_by_role("button", name="Verify").click()
    await expect(page).to_have_url(f"{base}/")
    await expect(page.get_by_role("heading", name="Home", level=1)).to_be_visible()

    # 2. Sign out, sign in again: password, then a code (a code is good once: the enrolment used this
    # 30-second step, so answer with the next step's code, which the server accepts as clock drift).
    await page.get_by_role("button", name=re.compile("Sign out")).click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    await checker.check("login")
    await page.get_by_label("Username").fill(USER)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/login/code$"))
    await checker.check("login-code")
    await page.get_by_label("6-digit code").fill(totp.at(time.time() + totp.interval))
    await page.get_by_role("button", name="Verify").click()
    await expect(page).to_have_url(f"{base}/")
    await checker.check("home")

    # 3. Fetch an electricity bill.
    await page.get_by_role("link", name="Bills", exact=True).click()
    await checker.check("bills")
    await page.get_by_label("China Power Grid (electricity)").check()  # bil_cn_power
    await page.get_by_label("Account number").fill("0031234567")
    await page.get_by_role("button", name="Fetch bill").click()
    await expect(page.locator("#bill-amount")).to_be_visible()
    await checker.check("electricity-bill")

    # 4. Pay it by a new card: 20,000 CNY (more than due, allowed by this biller) from a browser the hub
    # has not seen is ≥ 2,000 USD from a new device, which the dev risk rules challenge with an SMS code.
    await page.get_by_label(re.compile(r"^Amount")).fill("20000.00")
    await page.get_by_label("New card").check()
    await page.get_by_label("Card number").fill(CARD)
    await page.get_by_label("Expiry").fill("12/30")
    await page.get_by_label("Security code").fill("123")
    await page.get_by_role("button", name="Continue").click()
    await expect(page).to_have_url(re.compile(r"/bills/confirm$"))
    await expect(page.locator("#confirm-amount")).to_contain_text("20,000.00")
    await checker.check("confirm-electricity")
    sent_before = await message_count(stack.messages_url, PHONE)
    await page.get_by_role("button", name="Pay now").click()

    # 5. The OTP, read from the sandbox's message sink, typed into the page.
    await expect(page).to_have_url(re.compile(r"/payments/pay_[A-Za-z0-9]+/verify$"))
    await checker.check("otp")
    code = await latest_otp(stack.messages_url, PHONE, sent_before)
    await page.get_by_label("One-time code").fill(code)
    await page.get_by_role("button", name="Confirm").click()
    await expect(page).to_have_url(re.compile(r"/payments/pay_[A-Za-z0-9]+$"))
    card_payment = page.url.rsplit("/", 1)[1]
    await wait_for_text(page, "#payment-status", "succeeded")
    await checker.check("electricity-paid")

    # 6. It shows as succeeded in the history.
    await page.get_by_role("link", name="History", exact=True).click()
    row = page.get_by_role("row").filter(has=page.locator(f'a[href="/payments/{card_payment}"]'))
    await expect(row).to_contain_text("succeeded")
    await expect(row).to_contain_text("20,000.00")
    await checker.check("history")

    # 7. Top up the balance with the saved card, then pay the water bill from the balance.
    await page.get_by_role("link", name="Balance", exact=True).click()
    await page.get_by_label(re.compile(r"^Amount")).fill("600.00")
    await page.get_by_label(re.compile(r"Saved card")).first.check()
    await page.get_by_role("button", name="Top up").click()
    await expect(page.locator("#balance-available")).to_contain_text("600.00")
    await checker.check("balance-topped-up")
    topup_id = re.search(r"topup=(pay_[A-Za-z0-9]+)", page.url).group(1)  # type: ignore[union-attr]
    await page.get_by_role("link", name="Bills", exact=True).click()
    await page.get_by_label("China City Water (water)").check()  # bil_cn_water
    await page.get_by_label("Account number").fill("0031234567")
    await page.get_by_role("button", name="Fetch bill").click()
    await expect(page.locator("#bill-amount")).to_be_visible()
    await page.get_by_label("Balance", exact=True).check()
    await page.get_by_role("button", name="Continue").click()
    await expect(page.locator("#confirm-method")).to_have_text("Balance")
    await checker.check("confirm-water")
    await page.get_by_role("button", name="Pay now").click()
    await expect(page).to_have_url(re.compile(r"/payments/pay_[A-Za-z0-9]+$"))
    await wait_for_text(page, "#payment-status", "succeeded")
    await checker.check("water-paid")
    await page.get_by_role("link", name="Balance", exact=True).click()
    available = await page.locator("#balance-available").inner_text()
    assert "600.00" not in available, available  # the water bill came off the balance

    # 7b. A phone top-up (a bill payment to the operator) with the saved card.
    await page.get_by_role("link", name="Bills", exact=True).click()
    await page.get_by_label("Phone number").fill("+8613812345678")
    await page.get_by_label("30.00 CNY").check()
    await page.get_by_label(re.compile(r"Saved card")).first.check()
    await page.get_by_role("button", name="Continue").click()
    await expect(page.locator("#confirm-phone")).to_have_text("+86138•••••678")
    await checker.check("confirm-phone-top-up")
    await page.get_by_role("button", name="Pay now").click()
    await expect(page).to_have_url(re.compile(r"/payments/pay_[A-Za-z0-9]+$"))
    await wait_for_text(page, "#payment-status", "succeeded")
    await checker.check("phone-topped-up")

    # 7c. The tenant's back office refunds 10.00 of the top-up (off the balance); the payment page lists it.
    from payhub_client import AsyncPayhub

    assert stack.home is not None
    pki = stack.home / "pki"
    async with AsyncPayhub(
        url=stack.hub_url,
        cert=str(pki / "clients" / "acme.pem"),
        key=str(pki / "clients" / "acme.key"),
        cacert=str(pki / "ca.pem"),
    ) as back_office:
        refund = await back_office.refunds.create(payment=topup_id, amount=1000)
    await page.goto(f"{stack.app_url}/payments/{topup_id}")
    await expect(page.get_by_role("heading", name="Refunds")).to_be_visible()
    await expect(page.get_by_role("row").filter(has_text=refund.id)).to_contain_text("10.00")
    await checker.check("payment-with-refund")

    # 8. Dark theme and larger text, kept across a reload (applied by the server in <html>).
    await page.get_by_role("link", name="Preferences", exact=True).click()
    await page.get_by_label("Dark").check()
    await page.get_by_label("Text size").select_option("1.25")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("status")).to_contain_text("Saved")
    await page.reload()
    html = page.locator("html")
    await expect(html).to_have_attribute("data-theme", "dark")
    await expect(html).to_have_attribute("style", re.compile(r"--font-scale:\s*1\.25"))
    font_size = await page.evaluate("getComputedStyle(document.documentElement).fontSize")
    assert font_size == "20px", font_size
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(18, 22, 27)", background
    await checker.check("preferences-dark")

    # 9. A notification fed by the hub's signed webhook.
    await page.get_by_role("link", name="Notifications", exact=True).click()
    item = page.locator('[data-event-type="payment.succeeded"]')
    deadline = time.monotonic() + 30
    while await item.count() == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        await page.reload()
    await expect(item.first).to_contain_text("Payment succeeded")
    await checker.check("notifications")


async def wait_for_text(page: Any, selector: str, text: str, deadline: float = 30) -> None:
    """Bill postings settle a moment after the money is collected: reload until the page says so."""
    started = time.monotonic()
    while True:
        current = (await page.locator(selector).inner_text()).strip()
        if text in current:
            return
        if time.monotonic() - started > deadline:
            pytest.fail(f"{selector} still says {current!r} after {deadline} s at {page.url}")
        await asyncio.sleep(0.5)
        await page.reload()
