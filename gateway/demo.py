"""``payhub demo``: the scripted tour of DESIGN §4 against a gateway it starts itself.

Everything runs in this process on free loopback ports: the sandbox simulators, a gateway on an
embedded PostgreSQL under ``$PAYHUB_HOME/demo`` (its own dev PKI, a fresh database each run) and a
webhook receiver. The tour, as a tenant's app would make it over mutual TLS:

1. fetch an electricity bill and pay it by card;
2. a payment large enough for the dev risk rules to ask for a one-time code, read from the SMS sink
   and confirmed;
3. top up a phone;
4. fund a stored balance by card and spend from it;
5. refund the step-up payment;
6. receive the bill payment's signed ``payment.succeeded`` webhook and verify its signature.

It prints one row per step (what it checked, the ids) and exits 0 only when every step did what
it says. Logs go to ``$PAYHUB_HOME/demo/demo.log``, not to the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
from aiohttp import web

from config.settings import Settings
from connectors.sandbox.runner import start_sandbox
from crypto.pki import PkiPaths, init_pki
from crypto.signatures import SignatureError, verify_webhook
from gateway.logs import configure_logging
from gateway.server import start_gateway
from gateway.store.embedded import start_embedded, with_database

DEMO_DATABASE = "payhub_demo"
CARD = {"number": "4111111111111111", "exp_month": 12, "exp_year": 2031, "cvc": "123"}
PHONE = "+8613800138000"
STEP_UP_AMOUNT = 1_500_000  # 15,000.00 CNY ≈ 2,100 USD: a one-time code from a new device (dev rules)
WAIT = 15.0  # seconds any one thing may take
OTP = re.compile(r"\b([0-9]{6})\b")


class DemoFailed(Exception):
    """A step did not do what it says; the message says what happened instead."""


@dataclass
class Step:
    name: str
    ok: bool = False
    result: str = ""
    ids: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_settings(base: Settings, home: Path) -> Settings:
    """The configured tenants and rules, on free loopback ports, with the demo's own state directory."""
    sandbox = msgspec.structs.replace(
        base.sandbox,
        host="127.0.0.1",
        **{
            name: _free_port()
            for name in ("acquirer", "utility", "telecom", "bank", "ewallet", "fx", "messages", "books")
        },
    )
    server = msgspec.structs.replace(
        base.server,
        home=str(home),
        listen=f"127.0.0.1:{_free_port()}",
        ops_listen=f"127.0.0.1:{_free_port()}",
        dev_mode=True,  # the receiver is plain http on loopback
    )
    webhooks = msgspec.structs.replace(base.webhooks, interval=0.1)
    return msgspec.structs.replace(base, server=server, sandbox=sandbox, webhooks=webhooks, redis_url=None)


async def fresh_database(pg_dir: Path) -> str:
    """A new, empty demo database on the embedded server (the previous run's is dropped)."""
    admin = with_database(await asyncio.to_thread(start_embedded, pg_dir, "postgres"), "postgres")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}"')
    finally:
        await conn.close()
    return with_database(admin, DEMO_DATABASE)


class Receiver:
    """The tenant's webhook endpoint: keeps every event whose signature verifies, counts the others."""

    def __init__(self) -> None:
        self.secret = ""
        self.verified: list[dict[str, Any]] = []
        self.refused = 0
        self.port = _free_port()
        app = web.Application()
        app.router.add_post("/hooks/payhub", self._receive)
        self._runner = web.AppRunner(app, access_log=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/payhub"

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify_webhook(body, request.headers.get("Payhub-Signature", ""), [self.secret])
        except SignatureError:
            self.refused += 1
            return web.Response(status=400)
        self.verified.append(msgspec.json.decode(body))
        return web.Response(status=200)


class Api:
    """A tenant's client: mutual TLS with the dev certificate, an Idempotency-Key on every POST."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self._session = session
        self._base = base

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": f"demo-{secrets.token_hex(8)}"} if method == "POST" else {}
        async with self._session.request(method, self._base + path, json=body, headers=headers) as resp:
            answer: dict[str, Any] = await resp.json(content_type=None)
            if resp.status != 200:
                error = answer.get("error", {})
                raise DemoFailed(
                    f"{method} {path} answered {resp.status} {error.get('code')}: {error.get('message')}"
                )
            return answer


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)


async def until(probe: Callable[[], Awaitable[Any]], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if found := await probe():
            return found
        await asyncio.sleep(0.1)
    raise DemoFailed(f"{what}: nothing after {WAIT:.0f} s")


def card_payment(amount: int, **extra: Any) -> dict[str, Any]:
    return {"amount": amount, "currency": "CNY", "payment_method": {"type": "card", "card": CARD}, **extra}


async def pay_bill(api: Api, _: Settings) -> tuple[str, list[str]]:
    params = {"account_number": "0031234567"}
    bills = await api.call("POST", "/v1/bills/fetch", {"biller": "bil_cn_power", "customer_params": params})
    bill = bills["data"][0]
    paid = await api.call(
        "POST",
        "/v1/payments",
        card_payment(
            bill["amount_due"],
            bill={"biller": "bil_cn_power", "customer_params": params, "bill_ref": bill["bill_ref"]},
            description="Electricity",
        ),
    )
    posting = (paid.get("bill_posting") or {}).get("status")
    expect((paid["status"], posting) == ("succeeded", "posted"), f"bill payment {paid['status']}, {posting}")
    due = f"{bill['amount_due'] / 100:.2f} CNY"
    return f"bill {bill['bill_ref']} ({due}, due {bill['due_date']}) paid by card, posted", [paid["id"]]


async def step_up(api: Api, settings: Settings) -> tuple[str, list[str]]:
    device = f"dev_{secrets.token_hex(4)}"  # never seen before: the dev rules ask for a code
    customer = {"id": "cus_demo", "phone": PHONE, "device_id": device, "ip": "203.0.113.7", "country": "CN"}
    created = await api.call("POST", "/v1/payments", card_payment(STEP_UP_AMOUNT, customer=customer))
    action = created.get("next_action") or {}
    expect(
        (created["status"], action.get("type")) == ("requires_action", "otp"),
        f"expected an OTP challenge, got {created['status']} {action}",
    )
    sink = f"http://{settings.sandbox.host}:{settings.sandbox.messages}/messages"

    async def code() -> str | None:
        async with aiohttp.ClientSession() as plain, plain.get(sink, params={"to": PHONE}) as resp:
            messages = await resp.json()
        codes = [c for msg in messages if msg.get("channel") == "sms" for c in OTP.findall(msg["body"])]
        return codes[-1] if codes else None

    otp = await until(code, "the one-time code at the SMS sink")
    confirmed = await api.call("POST", f"/v1/payments/{created['id']}/confirm", {"otp": otp})
    expect(confirmed["status"] == "succeeded", f"after the code: {confirmed['status']}")
    return f"{STEP_UP_AMOUNT / 100:,.2f} CNY from a new device: OTP sent to {action.get('to')}, confirmed", [
        created["id"]
    ]


async def phone_top_up(api: Api, _: Settings) -> tuple[str, list[str]]:
    paid = await api.call(
        "POST",
        "/v1/payments",
        card_payment(3000, bill={"biller": "bil_cn_mobile", "customer_params": {"msisdn": "+8613812345678"}}),
    )

    async def settled() -> dict[str, Any] | None:
        current = await api.call("GET", f"/v1/payments/{paid['id']}")
        return current if current["status"] != "processing" else None

    final = paid if paid["status"] != "processing" else await until(settled, "the top-up")
    posting = (final.get("bill_posting") or {}).get("status")
    expect((final["status"], posting) == ("succeeded", "posted"), f"top-up {final['status']}, {posting}")
    return "30.00 CNY to +86 138 1234 5678 by card, credited by the operator", [paid["id"]]


async def balance(api: Api, _: Settings) -> tuple[str, list[str]]:
    account = await api.call("POST", "/v1/accounts", {"currency": "CNY", "customer": "cus_demo"})
    funded = await api.call(
        "POST",
        f"/v1/accounts/{account['id']}/topups",
        {"amount": 50000, "currency": "CNY", "payment_method": {"type": "card", "card": CARD}},
    )
    expect(funded["status"] == "succeeded", f"top-up of the balance {funded['status']}")
    spent = await api.call(
        "POST",
        "/v1/payments",
        {
            "amount": 12000,
            "currency": "CNY",
            "payment_method": {"type": "balance", "balance": {"account": account["id"]}},
        },
    )
    expect(spent["status"] == "succeeded", f"balance payment {spent['status']}")
    after = await api.call("GET", f"/v1/accounts/{account['id']}")
    left = after["balance"]["available"]
    expect(left == 38000, f"balance {left}, expected 38000")
    return "funded 500.00 CNY by card, spent 120.00, 380.00 left", [account["id"], funded["id"], spent["id"]]


async def refund(api: Api, _: Settings, payment_id: str) -> tuple[str, list[str]]:
    expect(bool(payment_id), "no payment to refund (the step-up payment was not made)")
    refunded = await api.call(
        "POST", "/v1/refunds", {"payment": payment_id, "reason": "requested_by_customer"}
    )
    expect(refunded["status"] == "succeeded", f"refund {refunded['status']}")
    payment = await api.call("GET", f"/v1/payments/{payment_id}")
    expect(payment["amount_refunded"] == payment["amount_captured"], "the payment is not fully refunded")
    return f"{refunded['amount'] / 100:,.2f} CNY back to the card", [refunded["id"]]


async def webhook(receiver: Receiver, bill_payment: str) -> tuple[str, list[str]]:
    async def delivered() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in receiver.verified
                if e["type"] == "payment.succeeded" and e["data"]["object"]["id"] == bill_payment
            ),
            None,
        )

    event = await until(delivered, "the signed payment.succeeded webhook")
    expect(receiver.refused == 0, f"{receiver.refused} deliveries failed the signature check")
    return (
        f"payment.succeeded for the bill, HMAC-SHA256 signature verified "
        f"({len(receiver.verified)} events received, all signed)",
        [event["id"]],
    )


@contextlib.asynccontextmanager
async def running(settings: Settings, home: Path) -> AsyncIterator[tuple[Api, Receiver]]:
    """Sandbox, gateway and receiver up; acme's client subscribed to every event."""
    pki = PkiPaths(settings.pki_dir)
    init_pki(pki, {tenant: t.role for tenant, t in settings.tenants.items()})
    url = await fresh_database(settings.pg_dir)
    settings = msgspec.structs.replace(settings, database=msgspec.structs.replace(settings.database, url=url))
    sandbox = await start_sandbox(settings)
    receiver = Receiver()
    await receiver.start()
    try:
        gateway = await start_gateway(settings)
        try:
            ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
            ctx.load_cert_chain(pki.client_cert("acme"), pki.client_key("acme"))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
                api = Api(session, f"https://localhost:{gateway.api_port}")
                endpoint = await api.call(
                    "POST", "/v1/webhook_endpoints", {"url": receiver.url, "enabled_events": ["*"]}
                )
                receiver.secret = endpoint["secret"]
                await until(lambda: _rates_ready(api), "FX rates for risk's amount in USD")
                yield api, receiver
        finally:
            await gateway.stop()
    finally:
        await receiver.close()
        await sandbox.close()


async def _rates_ready(api: Api) -> bool:
    try:
        await api.call("GET", "/v1/fx/rates")
    except DemoFailed:
        return False
    return True


async def tour(settings: Settings, home: Path) -> list[Step]:
    steps = [
        Step("1 pay a bill by card"),
        Step("2 OTP step-up"),
        Step("3 top up a phone"),
        Step("4 fund and spend a balance"),
        Step("5 refund"),
        Step("6 signed webhook"),
    ]
    async with running(settings, home) as (api, receiver):
        found: dict[str, str] = {}

        async def run(step: Step, action: Callable[[], Awaitable[tuple[str, list[str]]]]) -> None:
            try:
                step.result, step.ids = await action()
                step.ok = True
            except (DemoFailed, aiohttp.ClientError, TimeoutError, KeyError) as exc:
                step.result = f"{type(exc).__name__}: {exc}"

        await run(steps[0], lambda: pay_bill(api, settings))
        found["bill"] = steps[0].ids[0] if steps[0].ids else ""
        await run(steps[1], lambda: step_up(api, settings))
        await run(steps[2], lambda: phone_top_up(api, settings))
        await run(steps[3], lambda: balance(api, settings))
        step_up_id = steps[1].ids[0] if steps[1].ids else ""
        await run(steps[4], lambda: refund(api, settings, step_up_id))
        await run(steps[5], lambda: webhook(receiver, found["bill"]))
    return steps


def table(steps: list[Step], seconds: float) -> str:
    width = max(len(s.result) for s in steps)
    lines = [f"{'step':<28} {'ok':<4} {'result':<{width}}  ids", "-" * (36 + width + 30)]
    for s in steps:
        lines.append(f"{s.name:<28} {'yes' if s.ok else 'NO':<4} {s.result:<{width}}  {' '.join(s.ids)}")
    passed = sum(s.ok for s in steps)
    lines.append(f"\n{passed}/{len(steps)} steps did what they say, in {seconds:.1f} s")
    return "\n".join(lines)


def demo(base: Settings) -> int:
    home = Path(base.server.home) / "demo"
    home.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(base, home)
    started = time.monotonic()
    with (home / "demo.log").open("w") as log:
        configure_logging("info", stream=log)
        steps = asyncio.run(tour(settings, home))
    print(table(steps, time.monotonic() - started))
    print(f"(logs: {home / 'demo.log'})", file=sys.stderr)
    return 0 if all(s.ok for s in steps) else 1
