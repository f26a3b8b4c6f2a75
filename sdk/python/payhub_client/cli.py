"""``payhub-client``: the hub's API from a terminal, configured like curl.

Connection: ``--url`` (``PAYHUB_URL``, default https://localhost:8443), ``--cert`` / ``--key``
(``PAYHUB_CERT`` / ``PAYHUB_KEY``) or ``--p12`` (``PAYHUB_P12``), ``--cacert`` (``PAYHUB_CACERT``).
Output: readable tables, or ``--json`` for scripts. Exit status: 0 success, 1 the hub refused or failed
the request (message, code and request id on stderr), 2 usage, 3 the hub could not be reached,
4 a payment ended failed (``pay``/``topup``/``confirm``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from typing import Any, TextIO

import msgspec
from aiohttp import web

from . import webhooks
from ._client import AsyncPayhub
from ._transport import DEFAULT_URL
from ._version import __version__
from .errors import APIConnectionError, PayhubError
from .models import Event, Model, Payment

EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_CONNECTION, EXIT_FAILED = 0, 1, 2, 3, 4
WAIT_STATUSES = {"processing"}
PENDING_POSTINGS = {"posting", "pending"}


class UsageError(Exception):
    """A command line that cannot work (reported with exit status 2)."""


# ---- output -------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return msgspec.json.encode(value).decode()
    return str(value)


def money(amount: int | None, currency: str | None) -> str:
    if amount is None:
        return "-"
    exponent = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "KWD": 3, "BHD": 3, "JOD": 3, "OMR": 3}
    digits = exponent.get((currency or "").upper(), 2)
    text = f"{amount / 10**digits:,.{digits}f}" if digits else f"{amount:,}"
    return f"{text} {currency or ''}".strip()


Column = tuple[str, Callable[[Any], Any]]


def table(rows: Sequence[Any], columns: Sequence[Column], out: TextIO) -> None:
    cells = [[_cell(get(row)) for _, get in columns] for row in rows]
    headers = [name for name, _ in columns]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    out.write("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    if not rows:
        out.write("(none)\n")


def details(obj: Model, out: TextIO, fields: Sequence[Column] | None = None) -> None:
    pairs = (
        [(name, get(obj)) for name, get in fields]
        if fields is not None
        else list(msgspec.structs.asdict(obj).items())
    )
    width = max(len(name) for name, _ in pairs)
    for name, value in pairs:
        shown = msgspec.to_builtins(value) if isinstance(value, Model) else value
        out.write(f"{name.ljust(width)}  {_cell(shown)}\n")


def emit_json(value: Any, out: TextIO) -> None:
    out.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


PAYMENT_COLUMNS: list[Column] = [
    ("id", lambda p: p.id),
    ("status", lambda p: p.status),
    ("amount", lambda p: money(p.amount, p.currency)),
    ("method", lambda p: p.payment_method.get("type")),
    ("customer", lambda p: (p.customer or {}).get("id")),
    ("bill", lambda p: (p.bill_posting or {}).get("status")),
    ("created", lambda p: p.created),
]


def _payment_fields(p: Payment) -> list[Column]:
    method = p.payment_method
    card = method.get("card") if isinstance(method.get("card"), dict) else None
    shown = method.get("type")
    if card:
        shown = f"card {card.get('brand', '')} {card.get('bin', '')}…{card.get('last4', '')}".strip()
    fields: list[Column] = [
        ("id", lambda _: p.id),
        ("status", lambda _: p.status),
        ("amount", lambda _: money(p.amount, p.currency)),
        ("captured", lambda _: money(p.amount_captured, p.currency)),
        ("refunded", lambda _: money(p.amount_refunded, p.currency)),
        ("method", lambda _: shown),
        ("risk", lambda _: f"{p.risk.decision} (score {p.risk.score})" if p.risk else None),
    ]
    if p.next_action:
        fields.append(("next action", lambda _: p.next_action))
    if p.bill_posting:
        fields.append(("bill posting", lambda _: p.bill_posting))
    if p.failure is not None:
        failure = f"{p.failure.code}: {p.failure.message}" if p.failure.message else p.failure.code
        fields.append(("failure", lambda _: failure))
    if p.destination:
        fields.append(("destination", lambda _: p.destination))
    fields += [("connector", lambda _: p.connector), ("created", lambda _: p.created)]
    return fields


# ---- argument helpers ---------------------------------------------------------------------------


def key_values(pairs: Iterable[str] | None, flag: str = "--param") -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"{flag} {pair!r}: expected NAME=VALUE")
        result[name] = value
    return result


def expiry(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*", text)
    if not match:
        raise UsageError(f"--exp {text!r}: expected MM/YYYY (or MM/YY)")
    month, year = int(match[1]), int(match[2])
    return month, year + 2000 if year < 100 else year


def payment_method(args: argparse.Namespace, *, allowed: Sequence[str]) -> dict[str, Any]:
    chosen = [
        name
        for name in ("card", "token", "balance", "wallet", "bank", "prepaid")
        if getattr(args, name, None) is not None
    ]
    if len(chosen) != 1:
        options = ", ".join(f"--{name}" for name in allowed)
        raise UsageError(f"give exactly one payment method: {options}")
    which = chosen[0]
    if which not in allowed:
        raise UsageError(
            f"--{which} is not accepted here (use one of {', '.join('--' + a for a in allowed)})"
        )
    if which == "card":
        if not args.exp:
            raise UsageError("--card needs --exp MM/YYYY (and usually --cvc)")
        month, year = expiry(args.exp)
        card: dict[str, Any] = {"number": args.card, "exp_month": month, "exp_year": year}
        if args.cvc:
            card["cvc"] = args.cvc
        if getattr(args, "holder", None):
            card["holder_name"] = args.holder
        return {"type": "card", "card": card}
    if which == "token":
        return {"type": "card", "card": {"token": args.token}}
    if which == "balance":
        return {"type": "balance", "balance": {"account": args.balance}}
    if which == "wallet":
        return {"type": "wallet", "wallet": {"provider": args.wallet}}
    if which == "bank":
        return {"type": "bank_transfer", "bank_transfer": {"account_number": args.bank}}
    return {"type": "prepaid", "prepaid": {"code": args.prepaid}}


def customer(args: argparse.Namespace) -> dict[str, Any] | None:
    fields = {
        "id": args.customer,
        "email": args.email,
        "phone": args.phone,
        "ip": args.ip,
        "device_id": args.device,
        "country": args.country,
    }
    chosen = {k: v for k, v in fields.items() if v is not None}
    return chosen or None


# ---- progress -----------------------------------------------------------------------------------


class Progress:
    """A spinner on stderr at a terminal; one line per change otherwise."""

    FRAMES = "|/-\\"

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self.frame = 0
        self.last = ""
        self.started = time.monotonic()

    def update(self, text: str) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        if self.tty:
            self.frame += 1
            spinner = self.FRAMES[self.frame % len(self.FRAMES)]
            self.stream.write(f"\r{spinner} {text} ({elapsed:.0f}s)\033[K")
            self.stream.flush()
        elif text != self.last:
            self.stream.write(f"… {text} ({elapsed:.1f}s)\n")
            self.stream.flush()
        self.last = text

    def done(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def still_moving(payment: Payment) -> bool:
    if payment.status in WAIT_STATUSES:
        return True
    if payment.status == "requires_action" and (payment.next_action or {}).get("type") in {
        "qr_code",
        "redirect",
    }:
        return True  # an e-wallet order: the payer scans or is redirected, then the hub hears back
    return payment.bill_posting is not None and payment.bill_posting.get("status") in PENDING_POSTINGS


async def wait_for(hub: AsyncPayhub, payment: Payment, seconds: float, progress: Progress) -> Payment:
    deadline = time.monotonic() + seconds
    delay = 0.25
    while still_moving(payment) and time.monotonic() < deadline:
        posting = (payment.bill_posting or {}).get("status")
        progress.update(f"{payment.id} {payment.status}" + (f", bill {posting}" if posting else ""))
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 2.0)
        payment = await hub.payments.get(payment.id)
    progress.done()
    return payment


# ---- commands -----------------------------------------------------------------------------------


class Context:
    def __init__(self, hub: AsyncPayhub, args: argparse.Namespace) -> None:
        self.hub = hub
        self.args = args
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr

    @property
    def json(self) -> bool:
        return bool(self.args.json)

    def show(self, obj: Model, fields: Sequence[Column] | None = None) -> None:
        if self.json:
            emit_json(obj, self.out)
        else:
            details(obj, self.out, fields)

    def show_list(self, rows: Sequence[Any], columns: Sequence[Column]) -> None:
        if self.json:
            emit_json(list(rows), self.out)
        else:
            table(rows, columns, self.out)

    def show_payment(self, payment: Payment) -> int:
        self.show(payment, None if self.json else _payment_fields(payment))
        if not self.json and payment.next_action:
            action = payment.next_action
            kind = action.get("type")
            if kind == "otp":
                self.err.write(
                    f"OTP sent to {action.get('to', 'the customer')}: "
                    f"payhub-client confirm {payment.id} --otp CODE\n"
                )
            elif kind == "qr_code":
                self.err.write(f"Scan to pay: {action.get('data')}\n")
            elif kind == "redirect":
                self.err.write(f"Pay at: {action.get('url')}\n")
        return EXIT_FAILED if payment.status == "failed" else EXIT_OK


async def cmd_ping(ctx: Context) -> int:
    ping = await ctx.hub.ping()
    if ctx.json:
        emit_json(ping, ctx.out)
    else:
        ctx.out.write(f"ok: {ctx.hub.url} knows you as tenant {ping.tenant} (role {ping.role})\n")
    return EXIT_OK


async def cmd_billers(ctx: Context) -> int:
    args = ctx.args
    if args.biller:
        ctx.show(await ctx.hub.billers.get(args.biller))
        return EXIT_OK
    billers = await ctx.hub.billers.list(category=args.category, country=args.country, limit=100).collect()
    ctx.show_list(
        billers,
        [
            ("id", lambda b: b.id),
            ("name", lambda b: b.name),
            ("category", lambda b: b.category),
            ("country", lambda b: b.country),
            ("currency", lambda b: b.currency),
            ("params", lambda b: ", ".join(p.name for p in b.customer_params)),
            ("fetch", lambda b: b.fetch),
        ],
    )
    return EXIT_OK


async def cmd_bills_fetch(ctx: Context) -> int:
    args = ctx.args
    bills = await ctx.hub.bills.fetch(args.biller, key_values(args.param))
    ctx.show_list(
        bills,
        [
            ("bill_ref", lambda b: b.bill_ref),
            ("biller", lambda b: b.biller),
            ("amount_due", lambda b: money(b.amount_due, b.currency)),
            ("due_date", lambda b: b.due_date),
            ("customer", lambda b: b.customer_name),
        ],
    )
    return EXIT_OK


async def cmd_pay(ctx: Context) -> int:
    args = ctx.args
    method = payment_method(args, allowed=("card", "token", "balance", "wallet", "bank", "prepaid"))
    bill: dict[str, Any] | None = None
    amount, currency = args.amount, args.currency
    if args.bill:
        bill = {"biller": args.bill, "customer_params": key_values(args.param)}
        if args.bill_ref:
            bill["bill_ref"] = args.bill_ref
        if amount is None:
            # Pay the open bill: its amount, currency and reference.
            bills = await ctx.hub.bills.fetch(args.bill, bill["customer_params"])
            if not bills:
                raise UsageError("the biller has no open bill for these parameters; give --amount")
            chosen = next((b for b in bills if b.bill_ref == args.bill_ref), bills[0])
            amount, currency = chosen.amount_due, currency or chosen.currency
            bill["bill_ref"] = chosen.bill_ref
            if not ctx.json:
                ctx.err.write(
                    f"Paying {money(amount, chosen.currency)} to {chosen.biller} "
                    f"for {chosen.customer_name} (due {chosen.due_date})\n"
                )
    elif args.param:
        raise UsageError("--param goes with --bill BILLER")
    if amount is None or currency is None:
        raise UsageError("give --amount and --currency (or --bill with an open bill)")
    payment = await ctx.hub.payments.create(
        amount=amount,
        currency=currency,
        payment_method=method,
        customer=customer(args),
        bill=bill,
        fx_quote=args.fx_quote,
        capture_method="manual" if args.manual_capture else None,
        description=args.description,
        metadata=key_values(args.metadata, "--metadata") or None,
        idempotency_key=args.idempotency_key,
    )
    if args.wait:
        payment = await wait_for(ctx.hub, payment, args.wait_timeout, Progress(ctx.err))
    return ctx.show_payment(payment)


async def cmd_confirm(ctx: Context) -> int:
    args = ctx.args
    if (args.otp is None) == (args.device_signature is None):
        raise UsageError("give --otp CODE or --device-signature SIG")
    payment = await ctx.hub.payments.confirm(
        args.payment, otp=args.otp, device_signature=args.device_signature
    )
    if args.wait:
        payment = await wait_for(ctx.hub, payment, args.wait_timeout, Progress(ctx.err))
    return ctx.show_payment(payment)


async def cmd_payments_list(ctx: Context) -> int:
    args = ctx.args
    pager = ctx.hub.payments.list(
        status=args.status,
        method=args.method,
        customer=args.customer,
        biller=args.biller,
        created_gte=args.created_gte,
        created_lte=args.created_lte,
        amount_gte=args.amount_gte,
        amount_lte=args.amount_lte,
        limit=min(max(args.limit, 1), 100),
        starting_after=args.starting_after,
    )
    payments = await pager.collect(max_items=args.limit)
    ctx.show_list(payments, PAYMENT_COLUMNS)
    return EXIT_OK


async def cmd_payments_get(ctx: Context) -> int:
    payment = await ctx.hub.payments.get(ctx.args.payment)
    if ctx.args.wait:
        payment = await wait_for(ctx.hub, payment, ctx.args.wait_timeout, Progress(ctx.err))
    ctx.show_payment(payment)
    return EXIT_OK


async def cmd_capture(ctx: Context) -> int:
    return ctx.show_payment(await ctx.hub.payments.capture(ctx.args.payment, ctx.args.amount))


async def cmd_cancel(ctx: Context) -> int:
    ctx.show_payment(await ctx.hub.payments.cancel(ctx.args.payment, ctx.args.reason))
    return EXIT_OK


async def cmd_refund(ctx: Context) -> int:
    args = ctx.args
    refund = await ctx.hub.refunds.create(
        payment=args.payment, amount=args.amount, reason=args.reason, idempotency_key=args.idempotency_key
    )
    ctx.show(refund)
    return EXIT_FAILED if refund.status == "failed" else EXIT_OK


async def cmd_accounts_create(ctx: Context) -> int:
    ctx.show(await ctx.hub.accounts.create(ctx.args.currency, ctx.args.customer))
    return EXIT_OK


async def cmd_accounts_get(ctx: Context) -> int:
    account = await ctx.hub.accounts.get(ctx.args.account)
    fields: list[Column] = [
        ("id", lambda a: a.id),
        ("customer", lambda a: a.customer),
        ("available", lambda a: money(a.balance.available, a.currency)),
        ("pending", lambda a: money(a.balance.pending, a.currency)),
        ("created", lambda a: a.created),
    ]
    ctx.show(account, None if ctx.json else fields)
    return EXIT_OK


async def cmd_accounts_entries(ctx: Context) -> int:
    args = ctx.args
    entries = await ctx.hub.accounts.entries(args.account, limit=min(args.limit, 100)).collect(args.limit)
    ctx.show_list(
        entries,
        [
            ("id", lambda e: e.id),
            ("type", lambda e: e.type),
            ("amount", lambda e: money(e.amount, e.currency)),
            ("bucket", lambda e: e.bucket),
            ("payment", lambda e: e.payment),
            ("refund", lambda e: e.refund),
            ("created", lambda e: e.created),
        ],
    )
    return EXIT_OK


async def cmd_topup(ctx: Context) -> int:
    args = ctx.args
    method = payment_method(args, allowed=("card", "token", "bank"))
    payment = await ctx.hub.accounts.topup(
        args.account,
        amount=args.amount,
        currency=args.currency,
        payment_method=method,
        idempotency_key=args.idempotency_key,
    )
    if args.wait:
        payment = await wait_for(ctx.hub, payment, args.wait_timeout, Progress(ctx.err))
    return ctx.show_payment(payment)


REMINDER_COLUMNS: list[Column] = [
    ("id", lambda r: r.id),
    ("type", lambda r: r.type),
    ("customer", lambda r: r.customer),
    ("biller/account", lambda r: r.biller or r.account),
    ("threshold", lambda r: money(r.threshold, r.currency) if r.threshold is not None else None),
    ("lead_days", lambda r: r.lead_days),
    ("status", lambda r: r.status),
    ("next_run", lambda r: r.next_run),
]


async def cmd_reminders(ctx: Context) -> int:
    args = ctx.args
    action = args.reminders_action or "list"
    if action == "list":
        ctx.show_list(
            await ctx.hub.reminders.list(customer=args.customer).collect(args.limit), REMINDER_COLUMNS
        )
    elif action == "get":
        ctx.show(await ctx.hub.reminders.get(args.reminder))
    elif action == "delete":
        ctx.show(await ctx.hub.reminders.delete(args.reminder))
    else:
        body: dict[str, Any] = {"type": args.type, "customer": args.customer}
        if args.type == "bill_due":
            body |= {
                "biller": args.biller,
                "customer_params": key_values(args.param),
                "lead_days": args.lead_days,
            }
        else:
            body |= {"account": args.account, "threshold": args.threshold}
        ctx.show(await ctx.hub.reminders.create(**body))
    return EXIT_OK


# ---- listen -------------------------------------------------------------------------------------


LISTEN_HELP = """listen needs the endpoint's signing secret to verify deliveries. Either let it register one:
  payhub-client listen --register --port {port}
or register an endpoint yourself and pass its secret:
  curl --cert … --key … --cacert … -H 'Content-Type: application/json' \\
       -d '{{"url": "http://127.0.0.1:{port}/", "enabled_events": ["*"]}}' {url}/v1/webhook_endpoints
  payhub-client listen --port {port} --secret whsec_…   (or PAYHUB_WEBHOOK_SECRET)
"""


class Listener:
    """A local webhook receiver: verifies each delivery's signature and prints the event."""

    def __init__(self, ctx: Context, secrets: list[str]) -> None:
        self.ctx = ctx
        self.secrets = secrets
        self.received = 0
        self.done = asyncio.Event()

    async def receive(self, request: web.Request) -> web.Response:
        ctx, args = self.ctx, self.ctx.args
        payload = await request.read()
        header = request.headers.get(webhooks.HEADER, "")
        try:
            event = webhooks.verify(payload, header, self.secrets, args.tolerance)
        except webhooks.SignatureVerificationError as exc:
            ctx.err.write(f"rejected a delivery: {exc} ({exc.reason})\n")
            ctx.err.flush()
            return web.json_response({"error": str(exc)}, status=400)
        self.received += 1
        if ctx.json:
            ctx.out.write(payload.decode(errors="replace").strip() + "\n")
        else:
            ctx.out.write(self.line(event, request.headers.get("Payhub-Attempt", "?")) + "\n")
        ctx.out.flush()
        if args.count and self.received >= args.count:
            self.done.set()
        return web.json_response({"received": True})

    @staticmethod
    def line(event: Event, attempt: str) -> str:
        obj = event.data_object
        amount = obj.get("amount")
        parts = [
            str(obj.get("id", "")),
            str(obj.get("status", "")),
            money(amount, obj.get("currency")) if isinstance(amount, int) else "",
        ]
        summary = " ".join(part for part in parts if part)
        return f"{_cell(event.created)}  {event.type:<24} {event.id}  {summary}  (attempt {attempt})"

    async def serve(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.ctx.args.host, self.ctx.args.port)
        await site.start()
        port = self.ctx.args.port
        for address in runner.addresses:
            port = address[1]
        return runner, f"http://{self.ctx.args.host}:{port}/"


async def cmd_listen(ctx: Context) -> int:
    args = ctx.args
    secrets = list(args.secret or [])
    if not secrets and os.environ.get("PAYHUB_WEBHOOK_SECRET"):
        secrets = [s for s in os.environ["PAYHUB_WEBHOOK_SECRET"].split(",") if s]
    if not secrets and not args.register:
        ctx.err.write(LISTEN_HELP.format(port=args.port or 4242, url=ctx.hub.url))
        return EXIT_USAGE
    listener = Listener(ctx, secrets)
    runner, url = await listener.serve()
    endpoint_id: str | None = None
    try:
        if args.register:
            endpoint = await ctx.hub.webhook_endpoints.create(
                url=url, enabled_events=args.events or ["*"], description="payhub-client listen"
            )
            endpoint_id = endpoint.id
            secrets.append(endpoint.secret)
            ctx.err.write(f"Registered {endpoint.id} for {url} (deleted again when listen stops)\n")
        ctx.err.write(f"Ready: listening on {url} for signed events (Ctrl-C to stop)\n")
        ctx.err.flush()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, listener.done.set)
        await listener.done.wait()
    finally:
        if endpoint_id is not None:
            with contextlib.suppress(PayhubError):
                await ctx.hub.webhook_endpoints.delete(endpoint_id)
        await runner.cleanup()
    return EXIT_OK


# ---- parser -------------------------------------------------------------------------------------


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _add_connection(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: an option given before the command is not reset by the sub-command's defaults.
    group = parser.add_argument_group("connection (like curl)")
    s = argparse.SUPPRESS
    group.add_argument("--url", default=s, help=f"hub URL (PAYHUB_URL; default {DEFAULT_URL})")
    group.add_argument("--cert", default=s, help="client certificate, PEM (PAYHUB_CERT)")
    group.add_argument("--key", default=s, help="client private key, PEM (PAYHUB_KEY)")
    group.add_argument("--cacert", default=s, help="CA certificate(s) to trust, PEM (PAYHUB_CACERT)")
    group.add_argument("--p12", default=s, help="client certificate and key as PKCS#12 (PAYHUB_P12)")
    group.add_argument("--p12-password", default=s, help="PKCS#12 password (PAYHUB_P12_PASSWORD)")
    group.add_argument("--json", action="store_true", default=s, help="JSON output for scripts")
    group.add_argument("--max-retries", type=int, default=s, help="retries of a failed try (default 3)")
    group.add_argument("--timeout", type=float, default=s, help="seconds per try (default 60)")


def _add_method(parser: argparse.ArgumentParser, *, full: bool) -> None:
    group = parser.add_argument_group("payment method (one of)")
    group.add_argument("--card", metavar="NUMBER", help="card number (with --exp and --cvc)")
    group.add_argument("--exp", metavar="MM/YYYY", help="card expiry")
    group.add_argument("--cvc", help="card security code")
    group.add_argument("--holder", help="card holder name")
    group.add_argument("--token", metavar="TOK", help="a vaulted card (tok_…)")
    group.add_argument("--bank", metavar="ACCOUNT", help="bank transfer from this account number")
    if full:
        group.add_argument("--balance", metavar="ACCT", help="a stored balance (acct_…)")
        group.add_argument("--wallet", metavar="PROVIDER", help="alipay, wechat_pay or paypal")
        group.add_argument("--prepaid", metavar="CODE", help="a prepaid code (PP-…)")


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="wait (showing progress) until it settles")
    parser.add_argument("--wait-timeout", type=float, default=120.0, help="seconds to wait (default 120)")


Command = Callable[..., argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_connection(common)
    parser = argparse.ArgumentParser(
        prog="payhub-client",
        description="The payhub API from a terminal (mutual TLS, idempotent retries).",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"payhub-client {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, sub: Any = None) -> argparse.ArgumentParser:
        return (sub or commands).add_parser(name, help=help_text, description=help_text, parents=[common])

    for add in (_catalog_commands, _pay_commands, _history_commands, _balance_commands, _listen_command):
        add(command)
    return parser


def _catalog_commands(command: Command) -> None:
    command("ping", "check the connection and show who the hub thinks you are").set_defaults(run=cmd_ping)

    billers = command("billers", "list billers (or show one)")
    billers.add_argument("biller", nargs="?", help="a biller id to show")
    billers.add_argument("--category", help="electricity, water, gas, broadband, telecom_prepaid, …")
    billers.add_argument("--country", help="ISO country code, e.g. CN")
    billers.set_defaults(run=cmd_billers)

    bills = command("bills", "biller bills").add_subparsers(
        dest="bills_action", metavar="ACTION", required=True
    )
    fetch = command("fetch", "fetch the open bills of a biller account", bills)
    fetch.add_argument("biller", help="biller id, e.g. bil_cn_power")
    fetch.add_argument("--param", action="append", metavar="NAME=VALUE", help="customer parameter")
    fetch.set_defaults(run=cmd_bills_fetch)


def _pay_commands(command: Command) -> None:
    pay = command("pay", "create a payment (a bill payment with --bill)")
    pay.add_argument(
        "--amount", type=int, help="minor units (12850 = 128.50 CNY); a bill's amount due if omitted"
    )
    pay.add_argument("--currency", help="ISO 4217, e.g. CNY")
    _add_method(pay, full=True)
    bill = pay.add_argument_group("bill")
    bill.add_argument("--bill", metavar="BILLER", help="pay this biller (e.g. bil_cn_power)")
    bill.add_argument("--param", action="append", metavar="NAME=VALUE", help="customer parameter of the bill")
    bill.add_argument("--bill-ref", help="the bill's reference (from bills fetch)")
    who = pay.add_argument_group("customer")
    who.add_argument("--customer", metavar="ID")
    who.add_argument("--email")
    who.add_argument("--phone", help="E.164, receives the OTP of a step-up")
    who.add_argument("--ip")
    who.add_argument("--device", metavar="DEVICE_ID")
    who.add_argument("--country")
    pay.add_argument("--fx-quote", metavar="FXQ")
    pay.add_argument("--manual-capture", action="store_true", help="authorize only (capture later)")
    pay.add_argument("--description")
    pay.add_argument("--metadata", action="append", metavar="NAME=VALUE")
    pay.add_argument("--idempotency-key", help="default: a fresh one (retries reuse it)")
    _add_wait(pay)
    pay.set_defaults(run=cmd_pay)

    confirm = command("confirm", "answer a payment's step-up challenge")
    confirm.add_argument("payment", help="pay_…")
    confirm.add_argument("--otp", help="the 6-digit code sent to the customer")
    confirm.add_argument("--device-signature")
    _add_wait(confirm)
    confirm.set_defaults(run=cmd_confirm)


def _history_commands(command: Command) -> None:
    payments = command("payments", "payment history").add_subparsers(
        dest="payments_action", metavar="ACTION", required=True
    )
    listing = command("list", "list payments, newest first", payments)
    for name in ("status", "method", "customer", "biller"):
        listing.add_argument(f"--{name}")
    for name in ("created-gte", "created-lte"):
        listing.add_argument(f"--{name}", metavar="WHEN", help="RFC 3339 or Unix seconds")
    listing.add_argument("--amount-gte", type=int)
    listing.add_argument("--amount-lte", type=int)
    listing.add_argument(
        "--limit", type=int, default=20, help="how many to show (default 20, pages as needed)"
    )
    listing.add_argument("--starting-after", metavar="PAY")
    listing.set_defaults(run=cmd_payments_list)
    get = command("get", "show one payment", payments)
    get.add_argument("payment")
    _add_wait(get)
    get.set_defaults(run=cmd_payments_get)
    capture = command("capture", "capture an authorized payment", payments)
    capture.add_argument("payment")
    capture.add_argument("--amount", type=int, help="partial capture")
    capture.set_defaults(run=cmd_capture)
    cancel = command("cancel", "cancel a payment", payments)
    cancel.add_argument("payment")
    cancel.add_argument("--reason")
    cancel.set_defaults(run=cmd_cancel)

    refund = command("refund", "refund a payment (fully unless --amount)")
    refund.add_argument("payment")
    refund.add_argument("--amount", type=int)
    refund.add_argument("--reason", choices=["duplicate", "fraudulent", "requested_by_customer"])
    refund.add_argument("--idempotency-key")
    refund.set_defaults(run=cmd_refund)


def _balance_commands(command: Command) -> None:
    accounts = command("accounts", "stored-balance accounts").add_subparsers(
        dest="accounts_action", metavar="ACTION", required=True
    )
    create = command("create", "open an account", accounts)
    create.add_argument("--currency", required=True)
    create.add_argument("--customer")
    create.set_defaults(run=cmd_accounts_create)
    show = command("get", "show an account's balance", accounts)
    show.add_argument("account")
    show.set_defaults(run=cmd_accounts_get)
    entries = command("entries", "an account's ledger statement", accounts)
    entries.add_argument("account")
    entries.add_argument("--limit", type=int, default=20)
    entries.set_defaults(run=cmd_accounts_entries)

    topup = command("topup", "fund a stored balance by card or bank transfer")
    topup.add_argument("account", help="acct_…")
    topup.add_argument("--amount", type=int, required=True)
    topup.add_argument("--currency", required=True)
    _add_method(topup, full=False)
    topup.add_argument("--idempotency-key")
    _add_wait(topup)
    topup.set_defaults(run=cmd_topup)

    reminders = command("reminders", "bill due-date reminders and low-balance alerts")
    actions = reminders.add_subparsers(dest="reminders_action", metavar="ACTION")
    rlist = command("list", "list reminders", actions)
    rlist.add_argument("--customer")
    rlist.add_argument("--limit", type=int, default=50)
    rcreate = command("create", "create a reminder", actions)
    rcreate.add_argument("--type", choices=["bill_due", "low_balance"], required=True)
    rcreate.add_argument("--customer")
    rcreate.add_argument("--biller")
    rcreate.add_argument("--param", action="append", metavar="NAME=VALUE")
    rcreate.add_argument("--lead-days", type=int)
    rcreate.add_argument("--account")
    rcreate.add_argument("--threshold", type=int)
    for name in ("get", "delete"):
        one = command(name, f"{name} a reminder", actions)
        one.add_argument("reminder")
    reminders.set_defaults(run=cmd_reminders, customer=None, limit=50)


def _listen_command(command: Command) -> None:
    listen = command("listen", "receive, verify and print webhook events (like `stripe listen`)")
    listen.add_argument("--host", default="127.0.0.1")
    listen.add_argument("--port", type=int, default=0, help="default: a free port")
    listen.add_argument("--register", action="store_true", help="register an endpoint here (deleted on exit)")
    listen.add_argument("--events", action="append", metavar="TYPE", help="event types (default: all)")
    listen.add_argument("--secret", action="append", help="signing secret(s) (PAYHUB_WEBHOOK_SECRET)")
    listen.add_argument("--tolerance", type=int, default=webhooks.DEFAULT_TOLERANCE)
    listen.add_argument("--count", type=int, default=0, help="exit after this many events")
    listen.set_defaults(run=cmd_listen)


def make_client(args: argparse.Namespace) -> AsyncPayhub:
    url = getattr(args, "url", None) or _env("PAYHUB_URL") or DEFAULT_URL
    p12 = getattr(args, "p12", None) or _env("PAYHUB_P12")
    cert = getattr(args, "cert", None) or _env("PAYHUB_CERT")
    key = getattr(args, "key", None) or _env("PAYHUB_KEY")
    cacert = getattr(args, "cacert", None) or _env("PAYHUB_CACERT")
    password = getattr(args, "p12_password", None) or _env("PAYHUB_P12_PASSWORD")
    if p12 is None and cert is None:
        raise UsageError("no client certificate: give --cert/--key or --p12 (or PAYHUB_CERT/PAYHUB_KEY)")
    try:
        return AsyncPayhub(
            url,
            cert=None if p12 else cert,
            key=None if p12 else key,
            cacert=cacert,
            p12=p12,
            p12_password=password,
            max_retries=getattr(args, "max_retries", 3),
            timeout=getattr(args, "timeout", 60.0),
        )
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load the TLS files: {exc}") from exc


async def run(args: argparse.Namespace) -> int:
    hub = make_client(args)
    async with hub:
        result: int = await args.run(Context(hub, args))
        return result


def report(exc: PayhubError, as_json: bool) -> None:
    if as_json:
        error = {
            "type": exc.type,
            "code": exc.code,
            "message": exc.message,
            "param": exc.param,
            "request_id": exc.request_id,
            "status": exc.status,
        }
        emit_json({"error": error}, sys.stdout)
    sys.stderr.write(f"error: {exc.message}\n")
    what = [f"{exc.type}/{exc.code}" if exc.code else exc.type]
    if exc.status:
        what.append(f"HTTP {exc.status}")
    if exc.param:
        what.append(f"param {exc.param}")
    sys.stderr.write(f"  {', '.join(what)}\n")
    if exc.request_id:
        sys.stderr.write(f"  request id: {exc.request_id}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "json"):
        args.json = False
    try:
        return asyncio.run(run(args))
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"payhub-client: {exc}\n")
    except APIConnectionError as exc:
        report(exc, args.json)
        return EXIT_CONNECTION
    except PayhubError as exc:
        report(exc, args.json)
        return EXIT_API
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
