"""The conservation invariants, checked after quiescence against the hub's database and the
simulators' own books (``GET /books``), and the Jepsen-style figures of a run.

Each check returns :class:`Violation`s naming the objects involved. Sign convention for money:
``created`` is money the hub records that no processor or biller took (hub side > outside),
``lost`` is money taken or posted outside that the hub does not account for (outside > hub side).
The figures' money created / lost sum the differences of invariants 4-6 at one level each, so a
discrepancy is counted once per invariant: 4 per payment (and unknown processor records), 5 per bill
payment, unknown postings and biller payable, 6 per currency. Their per-connector and per-biller
totals are reported without an amount (they are sums of lines already counted).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from connectors.iso8583_card.transformers import rrn_for
from tests.model.harness import History, Try
from tests.model.receiver import Receipt

FINAL = frozenset({"succeeded", "failed", "canceled"})
# Statuses that wait on a documented external step (DESIGN §6): the payer, the merchant, an operator.
WAITING = frozenset({"requires_action", "requires_capture", "under_review"})
OPEN_ATTEMPT = frozenset({"started", "pending", "unknown"})
# Connector → its part of GET /books, the list in it, and the key of a record.
EXTERNAL: dict[str, tuple[str, str]] = {
    "iso8583_card": ("acquirer", "charges"),
    "bank_transfer": ("bank", "transfers"),
    "ewallet": ("ewallet", "orders"),
}
INTERNAL_CONNECTORS = frozenset({"inprocess"})  # prepaid: the issuer lives in the gateway, no book
BILLER_BOOKS = (("utility", "postings"), ("telecom", "topups"))


@dataclass(frozen=True)
class Violation:
    invariant: int
    objects: tuple[str, ...]
    message: str
    created: int = 0
    lost: int = 0
    stuck: bool = False
    duplicates: int = 0


def money(invariant: int, objects: tuple[str, ...], message: str, difference: int) -> Violation:
    """A money difference, hub side - outside: created when > 0, lost when < 0."""
    return Violation(invariant, objects, message, created=max(difference, 0), lost=max(-difference, 0))


# ---- the hub's side --------------------------------------------------------------------------


@dataclass
class Hub:
    payments: dict[str, dict[str, Any]]
    attempts: list[dict[str, Any]]
    refunds: list[dict[str, Any]]
    accounts: dict[str, dict[str, Any]]
    entries: dict[tuple[str, str], int]  # (account, bucket) → sum
    unbalanced: list[dict[str, Any]]
    events: list[dict[str, Any]] = field(default_factory=list)
    endpoints: list[dict[str, Any]] = field(default_factory=list)  # webhook endpoints
    deliveries: list[dict[str, Any]] = field(default_factory=list)  # webhook deliveries

    def attempts_of(self, payment_id: str, *operations: str) -> list[dict[str, Any]]:
        return [a for a in self.attempts if a["payment_id"] == payment_id and a["operation"] in operations]

    def entry_sum(self, account_id: str, bucket: str | None = None) -> int:
        buckets = ("available", "pending") if bucket is None else (bucket,)
        return sum(self.entries.get((account_id, b), 0) for b in buckets)

    def system_accounts(self, kind: str) -> list[dict[str, Any]]:
        return [a for a in self.accounts.values() if a["kind"] == kind]


def _jsonb(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


T = TypeVar("T")
Connection = asyncpg.Connection | PoolConnectionProxy  # what a read is given
# What a read sees while PostgreSQL restarts (postgres_restart): the pool's connections die with it.
DB_DOWN = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
)
DB_DEADLINE = 120.0


async def retrying(read: Callable[[Connection], Awaitable[T]], pool: asyncpg.Pool) -> T:
    """``read`` on a pooled connection, again on a fresh one while the database is away (the checker's
    own reads must outlive a database restart); up to ``DB_DEADLINE`` s."""
    started = time.monotonic()
    while True:
        try:
            async with pool.acquire() as conn:
                return await read(conn)
        except DB_DOWN:
            if time.monotonic() - started > DB_DEADLINE:
                raise
            await asyncio.sleep(0.25)


async def read_hub(pool: asyncpg.Pool) -> Hub:
    return await retrying(_read_hub, pool)


async def _read_hub(conn: Connection) -> Hub:
    payments = await conn.fetch(
        """SELECT id, tenant, status, amount, currency, amount_authorized, amount_captured,
                  amount_refunded, method, payment_method, capture_method, connector,
                  connector_reference, biller, bill, bill_posting, destination_account, failure_code
           FROM payments ORDER BY created, id"""
    )
    attempts = await conn.fetch(
        """SELECT id, payment_id, operation, connector, amount, status, refund_id, next_check
           FROM payment_attempts ORDER BY created, id"""
    )
    refunds = await conn.fetch(
        "SELECT id, payment_id, amount, currency, status, reason FROM refunds ORDER BY created, id"
    )
    accounts = await conn.fetch(
        "SELECT id, kind, currency, reference, available, pending FROM ledger_accounts"
    )
    entries = await conn.fetch(
        "SELECT account_id, bucket, sum(amount)::bigint AS total FROM ledger_entries GROUP BY 1, 2"
    )
    events = await conn.fetch("SELECT id, tenant, type, created FROM events")
    endpoints = await conn.fetch("SELECT id, tenant, enabled_events, status, created FROM webhook_endpoints")
    deliveries = await conn.fetch(
        "SELECT id::text AS id, event_id, endpoint_id, status, attempts FROM webhook_deliveries"
    )
    unbalanced = await conn.fetch(
        """SELECT e.transaction_id, e.currency, sum(e.amount)::bigint AS total, t.kind, t.payment_id
           FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
           GROUP BY 1, 2, 4, 5 HAVING sum(e.amount) <> 0"""
    )
    rows = []
    for row in payments:
        record = dict(row)
        record["bill_posting"] = _jsonb(record["bill_posting"])
        record["bill"] = _jsonb(record["bill"])
        record["payment_method"] = _jsonb(record["payment_method"])
        rows.append(record)
    return Hub(
        payments={r["id"]: r for r in rows},
        attempts=[dict(a) for a in attempts],
        refunds=[dict(r) for r in refunds],
        accounts={a["id"]: dict(a) for a in accounts},
        entries={(e["account_id"], e["bucket"]): int(e["total"]) for e in entries},
        unbalanced=[dict(u) for u in unbalanced],
        events=[dict(e) for e in events],
        endpoints=[dict(e) for e in endpoints],
        deliveries=[dict(d) for d in deliveries],
    )


def fx_of(payment: dict[str, Any]) -> dict[str, Any] | None:
    """The quote snapshot of a bill paid in another currency (docs/fx.md), or None."""
    bill = payment["bill"]
    fx = bill.get("fx") if isinstance(bill, dict) else None
    return fx if isinstance(fx, dict) else None


def in_bill_currency(payment: dict[str, Any], amount: int) -> tuple[int, str]:
    """An amount of the payment as the biller sees it: the quote's share for an FX bill."""
    fx = fx_of(payment)
    if fx is None:
        return amount, payment["currency"]
    if amount == fx["from_amount"]:
        return int(fx["to_amount"]), fx["to_currency"]
    return int(fx["to_amount"]) * amount // int(fx["from_amount"]), fx["to_currency"]


def posting_status(payment: dict[str, Any]) -> str | None:
    posting = payment["bill_posting"]
    return posting.get("status") if isinstance(posting, dict) else None


async def quiesce(
    pool: asyncpg.Pool, deadline: float, read_books: Callable[[], Awaitable[dict[str, Any]]]
) -> float:
    """Wait until no payment is ``processing`` (a manual-review posting aside), no refund is
    ``pending`` and no payment still ``requires_action`` for a wallet order its payer has paid, at
    most ``deadline`` seconds; returns how long it took."""

    async def busy_and_waiting(conn: Connection) -> tuple[int, list[asyncpg.Record]]:
        busy = await conn.fetchval(
            """SELECT (SELECT count(*) FROM payments WHERE status IN ('new', 'processing')
                         AND coalesce(bill_posting->>'status', '') <> 'manual_review')
                    + (SELECT count(*) FROM refunds WHERE status = 'pending')
                    + (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending')"""
        )
        waiting = await conn.fetch(
            """SELECT a.id FROM payment_attempts a JOIN payments p ON p.id = a.payment_id
               WHERE p.status = 'requires_action' AND p.method = 'wallet' AND a.operation = 'authorize'"""
        )
        return int(busy), waiting

    started = time.monotonic()
    while time.monotonic() - started < deadline:
        busy, waiting = await retrying(busy_and_waiting, pool)
        if busy == 0 and waiting:
            orders = Books.of(await read_books()).external["ewallet"]
            busy = sum(1 for a in waiting if orders.get(a["id"], {}).get("status") == "paid")
        if busy == 0:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - started


# ---- the books ---------------------------------------------------------------------------------


@dataclass
class Books:
    """The simulators' books, indexed by the hub's references."""

    raw: dict[str, Any]
    external: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # connector → ref → rec
    postings: dict[str, dict[str, Any]] = field(default_factory=dict)  # reference → posting/top-up
    webhooks: list[Receipt] = field(default_factory=list)  # the webhook receiver's own book

    @classmethod
    def of(cls, raw: dict[str, Any], forgotten: Remembered | None = None) -> Books:
        """``forgotten``: what a biller that lost its state had booked before (see :class:`Remembered`)."""
        books = cls(raw)
        for connector, (part, listing) in EXTERNAL.items():
            key = "rrn" if part == "acquirer" else "reference"
            books.external[connector] = {r[key]: r for r in raw.get(part, {}).get(listing, [])}
        if forgotten is not None:
            books.postings.update(forgotten.postings)
        for part, listing in BILLER_BOOKS:
            for record in raw.get(part, {}).get(listing, []):
                books.postings[record["reference"]] = record
        return books

    def record(self, connector: str, attempt_id: str) -> dict[str, Any] | None:
        """The processor's record of one hub attempt (the acquirer keys by the attempt's RRN)."""
        ref = rrn_for(attempt_id) if connector == "iso8583_card" else attempt_id
        return self.external.get(connector, {}).get(ref)


@dataclass
class Remembered:
    """The utility biller's postings read just before each restart that lost its state
    (``biller_restart_lost``), accumulated across restarts: a restarted biller's book no longer lists
    what it posted before, yet that money was posted. Merged into :meth:`Books.of` by reference: a record
    in the current book replaces the remembered one (the hub re-posted under the same reference), a
    record only remembered stays."""

    postings: dict[str, dict[str, Any]] = field(default_factory=dict)  # reference → last record seen

    def before_forgetting(self, raw: dict[str, Any]) -> None:
        """Note the books read just before the biller forgets (a later read replaces an earlier one)."""
        for record in raw.get("utility", {}).get("postings", []):
            self.postings[record["reference"]] = record


def payment_records(hub: Hub, books: Books, payment: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(attempt id, processor record) of the attempts that can take money for a payment.

    Card: every authorize and capture attempt's RRN (a capture advice is booked on the authorization's
    RRN, so its own RRN normally has no record); bank and wallet: the authorize attempts' references.
    """
    found = []
    for attempt in hub.attempts_of(payment["id"], "authorize", "capture"):
        record = books.record(attempt["connector"], attempt["id"])
        if record is not None and record.get("kind") != "refund":
            found.append((attempt["id"], record))
    return found


# ---- the invariants ----------------------------------------------------------------------------


def inv1_final_or_waiting(hub: Hub, books: Books, history: History) -> list[Violation]:
    """1. Every payment and refund is final, or waits on a documented external step: a wallet order
    the payer has not paid (``requires_action``), an authorization held for capture
    (``requires_capture``), an operator (``under_review``, bill posting ``manual_review``). No
    attempt of a final payment is left unfinished, and every request got an answer."""
    found = []
    for p in hub.payments.values():
        pid, status = p["id"], p["status"]
        if status in FINAL:
            open_attempts = [
                a["id"] for a in hub.attempts_of(pid, *_ALL_OPERATIONS) if a["status"] in OPEN_ATTEMPT
            ]
            if open_attempts and posting_status(p) != "manual_review":
                found.append(
                    Violation(
                        1, (pid, *open_attempts), f"{status} payment with unfinished attempts", stuck=True
                    )
                )
            continue
        if status == "processing" and posting_status(p) == "manual_review":
            continue
        if status == "requires_action" and p["method"] == "wallet":
            paid = [
                att
                for att, rec in payment_records(hub, books, p)
                if rec.get("status") not in ("unpaid", "closed")
            ]
            if paid:
                found.append(
                    Violation(
                        1,
                        (pid, *paid),
                        "wallet order paid at the wallet, hub still requires_action",
                        stuck=True,
                    )
                )
            continue
        if status == "requires_capture":
            held = [att for att, rec in payment_records(hub, books, p) if rec.get("status") == "authorized"]
            if not held and p["method"] == "card":
                found.append(
                    Violation(
                        1, (pid,), "requires_capture but the acquirer holds no open authorization", stuck=True
                    )
                )
            continue
        if status in WAITING:
            continue
        found.append(
            Violation(
                1,
                (pid,),
                f"payment still {status} (method {p['method']}, posting {posting_status(p)}) when quiet",
                stuck=True,
            )
        )
    for r in hub.refunds:
        if r["status"] not in ("succeeded", "failed"):
            found.append(Violation(1, (r["id"], r["payment_id"]), f"refund still {r['status']}", stuck=True))
    for op in history:
        if op.answer is None:
            found.append(
                Violation(1, (f"#{op.number}",), f"request never answered: {op.summary()}", stuck=True)
            )
    return found


_ALL_OPERATIONS = ("authorize", "capture", "void", "refund", "post_bill", "reverse_bill")


def inv2_ledger_balanced(hub: Hub, books: Books, history: History) -> list[Violation]:
    """2. Every ledger transaction sums to zero per currency."""
    return [
        Violation(
            2,
            (u["transaction_id"], *([u["payment_id"]] if u["payment_id"] else [])),
            f"ledger transaction {u['kind']} sums to {u['total']} {u['currency']}",
        )
        for u in hub.unbalanced
    ]


def inv3_balances(hub: Hub, books: Books, history: History) -> list[Violation]:
    """3. Every customer balance (its running ``available``/``pending``) equals the sum of its entries,
    is never negative, and equals what the hub's own payments say: the net captured amount
    (captured - refunded) of the succeeded top-ups it received, less the net of the balance
    payments it funded; ``pending`` holds the bank top-ups still in flight."""
    expected_available: dict[str, int] = defaultdict(int)
    expected_pending: dict[str, int] = defaultdict(int)
    for p in hub.payments.values():
        net = p["amount_captured"] - p["amount_refunded"]
        if p["destination_account"] is not None:
            if p["status"] == "processing":
                expected_pending[p["destination_account"]] += p["amount"]
            else:
                expected_available[p["destination_account"]] += net
        if p["method"] == "balance":
            expected_available[p["payment_method"]["balance"]["account"]] -= net
    found = running_balances(hub)
    for account in hub.system_accounts("customer_balance"):
        aid = account["id"]
        available, pending = hub.entry_sum(aid, "available"), hub.entry_sum(aid, "pending")
        want = (expected_available[aid], expected_pending[aid])
        if (available, pending) != want:
            related = [
                p["id"]
                for p in hub.payments.values()
                if p["destination_account"] == aid
                or (p["method"] == "balance" and p["payment_method"]["balance"]["account"] == aid)
            ]
            difference = available + pending - sum(want)
            found.append(
                money(
                    3,
                    (aid, *related),
                    f"balance holds available={available} pending={pending}, its payments say "
                    f"available={want[0]} pending={want[1]} (difference {difference:+d})",
                    difference,
                )
            )
    return found


def running_balances(hub: Hub) -> list[Violation]:
    """Invariant 3's part that holds at every moment: running balance = sum of entries, never < 0."""
    found = []
    for account in hub.system_accounts("customer_balance"):
        aid = account["id"]
        available, pending = hub.entry_sum(aid, "available"), hub.entry_sum(aid, "pending")
        if (account["available"], account["pending"]) != (available, pending):
            found.append(
                Violation(
                    3,
                    (aid,),
                    f"balance shows available={account['available']} pending={account['pending']}, "
                    f"its entries sum to available={available} pending={pending}",
                )
            )
        if account["available"] < 0 or account["pending"] < 0:
            found.append(
                Violation(3, (aid,), f"negative balance {account['available']}/{account['pending']}")
            )
    return found


def inv4_net_charge(hub: Hub, books: Books, history: History) -> list[Violation]:
    """4. For every payment collected by an external processor (card acquirer, bank, e-wallet), the
    processor's net charge in its own book (``charged``: taken and not given back) equals the hub's
    ``amount_captured - amount_refunded``. At most one authorize attempt of a payment is charged, the
    processor refunded no more times than the hub recorded refunds, and nothing the processor charged
    is unknown to the hub. Prepaid payments go to the in-process issuer inside the gateway, which keeps
    no external book: they are skipped here (their ledger side is still in invariants 2 and 6);
    balance payments move no external money (invariant 3)."""
    found = []
    known_refs: dict[str, set[str]] = defaultdict(set)
    for attempt in hub.attempts:
        ref = rrn_for(attempt["id"]) if attempt["connector"] == "iso8583_card" else attempt["id"]
        known_refs[attempt["connector"]].add(ref)
    for refund in hub.refunds:  # a biller rejection refunds with the refund id as the attempt reference
        known_refs["iso8583_card"].add(rrn_for(refund["id"]))
        for connector in ("bank_transfer", "ewallet"):
            known_refs[connector].add(refund["id"])
    for p in hub.payments.values():
        if p["connector"] not in EXTERNAL or p["method"] in ("balance", "prepaid"):
            continue
        records = payment_records(hub, books, p)
        charged = sum(int(rec.get("charged", 0)) for _, rec in records)
        net = p["amount_captured"] - p["amount_refunded"]
        if charged != net:
            found.append(
                money(
                    4,
                    (p["id"], *(att for att, _ in records)),
                    f"{p['method']} payment ({p['status']}): processor charged {charged}, hub says "
                    f"captured {p['amount_captured']} - refunded {p['amount_refunded']} = {net}",
                    net - charged,
                )
            )
        charging = [att for att, rec in records if int(rec.get("charged", 0)) > 0]
        if len(charging) > 1:
            found.append(
                Violation(
                    4, (p["id"], *charging), "more than one attempt charged", duplicates=len(charging) - 1
                )
            )
        processor_refunds = _processor_refunds(books, p, records)
        hub_refunds = sum(1 for r in hub.refunds if r["payment_id"] == p["id"] and r["status"] == "succeeded")
        if processor_refunds > hub_refunds:
            found.append(
                Violation(
                    4,
                    (p["id"],),
                    f"processor made {processor_refunds} refunds, the hub recorded {hub_refunds} succeeded",
                    duplicates=processor_refunds - hub_refunds,
                )
            )
    for connector, book in books.external.items():
        for ref, rec in book.items():
            if rec.get("kind") == "refund" or ref in known_refs[connector]:
                continue
            if int(rec.get("charged", 0)) != 0:
                found.append(
                    Violation(
                        4,
                        (f"{connector}:{ref}",),
                        f"processor charged {rec['charged']} {rec.get('currency')}, unknown to the hub",
                        lost=int(rec["charged"]),
                    )
                )
    return found


def _processor_refunds(
    books: Books, payment: dict[str, Any], records: list[tuple[str, dict[str, Any]]]
) -> int:
    if payment["connector"] == "iso8583_card":
        rrns = {rec["rrn"] for _, rec in records}
        charges = books.external["iso8583_card"].values()
        return sum(
            1
            for c in charges
            if c.get("kind") == "refund" and c.get("status") == "refunded" and c.get("original_rrn") in rrns
        )
    return sum(
        1 for _, rec in records for made in rec.get("refunds", []) if made.get("status") == "succeeded"
    )


def inv5_billers(hub: Hub, books: Books, history: History) -> list[Violation]:
    """5. Each biller's book agrees with the hub: per bill payment, the amount posted at the biller
    under the payment's post_bill attempt equals ``amount_captured`` when the hub says ``posted``
    and 0 otherwise; per biller, the posted total equals the hub's posted bills, and the hub's
    payable to that biller (ledger) holds exactly that (the hub pays billers out later). Postings the
    hub does not know are money lost. A posting under manual review is left out (an operator decides)."""
    found = []
    book_total: dict[tuple[str, str], int] = defaultdict(int)
    for record in books.postings.values():
        book_total[(record["biller"], record["currency"])] += int(record.get("posted", 0))
    hub_total: dict[tuple[str, str], int] = defaultdict(int)
    review: dict[tuple[str, str], int] = defaultdict(int)
    post_refs: set[str] = set()
    for p in hub.payments.values():
        if p["biller"] is None:
            continue
        captured, currency = in_bill_currency(p, p["amount_captured"])
        key = (p["biller"], currency)
        posts = hub.attempts_of(p["id"], "post_bill")
        post_refs.update(a["id"] for a in posts)
        state = posting_status(p)
        if state == "manual_review":
            review[key] += captured - in_bill_currency(p, p["amount_refunded"])[0]
            continue
        expected = captured if state == "posted" else 0
        hub_total[key] += expected
        posted = sum(int(books.postings.get(a["id"], {}).get("posted", 0)) for a in posts)
        if posted != expected:
            found.append(
                money(
                    5,
                    (p["id"], *(a["id"] for a in posts)),
                    f"bill payment ({p['status']}, {p['method']}, posting {state}): biller posted {posted}, "
                    f"hub expects {expected}",
                    expected - posted,
                )
            )
        if sum(1 for a in posts if int(books.postings.get(a["id"], {}).get("posted", 0)) > 0) > 1:
            found.append(Violation(5, (p["id"],), "posted more than once at the biller", duplicates=1))
    for ref, record in books.postings.items():
        if ref not in post_refs and int(record.get("posted", 0)) > 0:
            found.append(
                Violation(
                    5,
                    (f"{record['biller']}:{ref}",),
                    "posting no hub attempt made",
                    lost=int(record["posted"]),
                )
            )
    payable: dict[tuple[str, str], int] = defaultdict(int)
    for account in hub.system_accounts("biller_payable"):
        payable[(account["reference"], account["currency"])] += hub.entry_sum(account["id"])
    for key in sorted(set(book_total) | set(hub_total) | set(payable)):
        biller, currency = key
        if book_total[key] != hub_total[key]:
            found.append(  # the per-payment lines above carry the money; this is their sum
                Violation(
                    5,
                    (biller,),
                    f"{biller} posted {book_total[key]} {currency} in its book, the hub's posted bills total "
                    f"{hub_total[key]}",
                )
            )
        if payable[key] != book_total[key] + review[key]:
            found.append(
                money(
                    5,
                    (f"payable:{biller}:{currency}",),
                    f"the hub owes {biller} {payable[key]} {currency} (ledger payable), the biller posted "
                    f"{book_total[key]}" + (f" (+{review[key]} under manual review)" if review[key] else ""),
                    payable[key] - book_total[key] - review[key],
                )
            )
    return found


def inv6_conservation(hub: Hub, books: Books, history: History) -> list[Violation]:
    """6. Conservation per currency: what the processors took (their books' ``charged``; plus, for
    prepaid, what the in-process issuer's receivable gave) equals what the hub holds or owes from the
    ledger: customer balances + tenant clearing + biller payables. Per connector, -(the receivable's
    available entries) equals its processor's ``charged`` total, and no receivable still holds money
    in its pending bucket (in flight) once everything is quiet."""
    found = []
    took: dict[str, int] = defaultdict(int)
    book_charged: dict[tuple[str, str], int] = defaultdict(int)
    for connector, records in books.external.items():
        for rec in records.values():
            if rec.get("kind") != "refund":
                book_charged[(connector, rec["currency"])] += int(rec.get("charged", 0))
                took[rec["currency"]] += int(rec.get("charged", 0))
    receivable: dict[tuple[str, str], int] = defaultdict(int)
    for account in hub.system_accounts("connector_receivable"):
        connector, currency = account["reference"], account["currency"]
        receivable[(connector, currency)] += -hub.entry_sum(account["id"], "available")
        in_flight = hub.entry_sum(account["id"], "pending")
        if in_flight:
            found.append(
                Violation(
                    6, (account["id"],), f"{in_flight} {currency} still in the receivable's pending bucket"
                )
            )
        if connector in INTERNAL_CONNECTORS:
            took[currency] += -hub.entry_sum(account["id"])
    for key in sorted(set(book_charged) | {k for k in receivable if k[0] not in INTERNAL_CONNECTORS}):
        connector, currency = key
        if receivable[key] != book_charged[key]:
            found.append(  # per connector; the money is counted once, per currency below
                Violation(
                    6,
                    (f"receivable:{connector}:{currency}",),
                    f"{connector}: the hub's receivable says it took {receivable[key]} {currency}, its book "
                    f"says {book_charged[key]} (difference {receivable[key] - book_charged[key]:+d})",
                )
            )
    holds: dict[str, int] = defaultdict(int)
    parts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for account in hub.accounts.values():
        if account["kind"] == "connector_receivable":
            continue
        amount = hub.entry_sum(account["id"])
        holds[account["currency"]] += amount
        parts[account["currency"]][account["kind"]] += amount
    for currency in sorted(set(took) | set(holds)):
        if took[currency] != holds[currency]:
            detail = ", ".join(f"{k} {v}" for k, v in sorted(parts[currency].items()))
            found.append(
                money(
                    6,
                    (currency,),
                    f"processors took {took[currency]} {currency}, the hub holds or owes {holds[currency]} "
                    f"({detail})",
                    holds[currency] - took[currency],
                )
            )
    return found


def inv8_fx(hub: Hub, books: Books, history: History) -> list[Violation]:
    """8. FX: each quote paid at most one payment, and the hub's FX position per currency (its ``fx``
    accounts) is what its standing FX bill payments converted: +(from - fee) in the payer's currency,
    -to in the biller's; the spread (``fees``) is their fees. A payment whose money went back (the
    biller rejected or reversed it) leaves nothing in either."""
    found = []
    quotes: dict[str, list[str]] = defaultdict(list)
    position: dict[str, int] = defaultdict(int)
    fees: dict[str, int] = defaultdict(int)
    for p in hub.payments.values():
        fx = fx_of(p)
        if fx is None:
            continue
        quotes[fx["quote"]].append(p["id"])
        kept = p["amount_captured"] - p["amount_refunded"]
        if kept <= 0:
            continue
        to_part, _ = in_bill_currency(p, kept)
        fee_part = (
            int(fx["fee"]) * kept // int(fx["from_amount"]) if kept != fx["from_amount"] else int(fx["fee"])
        )
        position[fx["from_currency"]] += kept - fee_part
        position[fx["to_currency"]] -= to_part
        fees[fx["from_currency"]] += fee_part
    for quote, used_by in quotes.items():
        if len(used_by) > 1:
            found.append(
                Violation(8, (quote, *used_by), f"one quote paid {len(used_by)} payments", duplicates=1)
            )
    ledger_position: dict[str, int] = defaultdict(int)
    for account in hub.system_accounts("fx"):
        ledger_position[account["currency"]] += hub.entry_sum(account["id"])
    ledger_fees: dict[str, int] = defaultdict(int)
    for account in hub.system_accounts("fees"):
        if account["reference"] == "fx_spread":
            ledger_fees[account["currency"]] += hub.entry_sum(account["id"])
    for currency in sorted(set(position) | set(ledger_position)):
        if position[currency] != ledger_position[currency]:
            found.append(
                money(
                    8,
                    (f"fx:{currency}",),
                    f"FX position {ledger_position[currency]} {currency} in the ledger, the FX payments "
                    f"say {position[currency]}",
                    ledger_position[currency] - position[currency],
                )
            )
    for currency in sorted(set(fees) | set(ledger_fees)):
        if fees[currency] != ledger_fees[currency]:
            found.append(
                money(
                    8,
                    (f"fees:{currency}",),
                    f"FX spread {ledger_fees[currency]} {currency} in the ledger, the FX payments say "
                    f"{fees[currency]}",
                    ledger_fees[currency] - fees[currency],
                )
            )
    return found


def inv9_webhooks(hub: Hub, books: Books, history: History) -> list[Violation]:
    """9. Webhooks: no event is lost and no attempt is made twice. Every event after an endpoint
    subscribed to it has one delivery to it, delivered or dead once everything is quiet; the receiver's
    own book shows each delivered one answered 2xx under a valid signature; no (delivery, attempt)
    arrived twice; nothing arrived that the hub did not send. (An event may arrive more than once, on
    later attempts after a crash cut an answer: receivers de-duplicate on the event id.)"""
    found = []
    deliveries = {(d["event_id"], d["endpoint_id"]): d for d in hub.deliveries}
    for endpoint in hub.endpoints:
        if endpoint["status"] != "enabled":
            continue
        types = set(endpoint["enabled_events"])
        for event in hub.events:
            subscribed = "*" in types or event["type"] in types
            if (
                event["tenant"] != endpoint["tenant"]
                or not subscribed
                or event["created"] < endpoint["created"]
            ):
                continue
            delivery = deliveries.get((event["id"], endpoint["id"]))
            if delivery is None:
                found.append(
                    Violation(9, (event["id"], endpoint["id"]), f"{event['type']}: no delivery (lost)")
                )
            elif delivery["status"] not in ("delivered", "dead"):
                found.append(
                    Violation(
                        9,
                        (event["id"], delivery["id"]),
                        f"{event['type']}: still {delivery['status']}, {delivery['attempts']} attempts",
                        stuck=True,
                    )
                )
    seen: dict[tuple[str, int], int] = defaultdict(int)
    answered_ok: set[str] = set()
    for receipt in books.webhooks:
        seen[(receipt.delivery, receipt.attempt)] += 1
        if not receipt.signed:
            found.append(
                Violation(9, (receipt.event_id, receipt.delivery), "arrived without a valid signature")
            )
        if receipt.answered < 300:
            answered_ok.add(receipt.delivery)
    for (delivery_id, attempt), times in seen.items():
        if times > 1:
            found.append(
                Violation(9, (delivery_id,), f"attempt {attempt} arrived {times} times", duplicates=times - 1)
            )
    known = {d["id"] for d in hub.deliveries}
    for delivery in hub.deliveries:
        if delivery["status"] == "delivered" and delivery["id"] not in answered_ok:
            found.append(
                Violation(
                    9, (delivery["event_id"], delivery["id"]), "delivered, but the receiver never said 2xx"
                )
            )
    for receipt in books.webhooks:
        if receipt.delivery not in known:
            found.append(
                Violation(
                    9, (receipt.event_id, receipt.delivery), "arrived, but the hub sent no such delivery"
                )
            )
    return found


def inv7_no_5xx(hub: Hub, books: Books, history: History) -> list[Violation]:
    """7. No request was ever answered with a 5xx (no answer while the gateway was down is not an answer).
    The documented exceptions, asked again: 503 ``rates_stale`` to an FX quote asked of a gateway that
    has just restarted and not yet read the FX feed (docs/fx.md), and 503 ``database_unavailable``
    while PostgreSQL is away."""
    return [
        Violation(7, (f"#{op.number}",), f"answered {t.status}: {op.summary()} :: {t.raw[:200]!r}")
        for op in history
        for t in op.tries
        if is_5xx(t)
    ]


def is_5xx(attempt: Try) -> bool:
    """An error answer: any 5xx but the documented retry-later 503s."""
    return attempt.status is not None and attempt.status >= 500 and not attempt.unavailable


INVARIANTS: tuple[Callable[[Hub, Books, History], list[Violation]], ...] = (
    inv1_final_or_waiting,
    inv2_ledger_balanced,
    inv3_balances,
    inv4_net_charge,
    inv5_billers,
    inv6_conservation,
    inv7_no_5xx,
    inv8_fx,
    inv9_webhooks,
)


TITLES = {
    0: "A. answers as documented (DESIGN §12 outcomes, byte-for-byte replays, the gateway never exits)",
    1: "1. every payment and refund final or waiting on a documented external step",
    2: "2. the ledger balanced per transaction and currency",
    3: "3. customer balances = their entries = what their payments say, never < 0",
    4: "4. per payment, the processor's net charge = captured - refunded",
    5: "5. per biller, posted at the biller = the hub's posted bills = the hub's payable",
    6: "6. per currency, what processors took = what the hub holds or owes",
    7: "7. no 5xx answer, ever",
    8: "8. FX: a quote pays once; the FX position and spread = what the standing FX payments converted",
    9: "9. webhooks: every event delivered or dead, each attempt sent once, signed, as the receiver saw it",
}


def check(hub: Hub, books: Books, history: History) -> list[Violation]:
    return [v for invariant in INVARIANTS for v in invariant(hub, books, history)]


def coverage(hub: Hub, books: Books) -> str:
    """What the checks looked at, so that a pass is not an empty one."""
    external = sum(len(records) for records in books.external.values())
    return (
        f"{len(hub.payments)} payments, {len(hub.refunds)} refunds, {len(hub.attempts)} attempts, "
        f"{len(hub.system_accounts('customer_balance'))} balances, {external} processor records, "
        f"{len(books.postings)} biller postings, "
        f"{sum(1 for p in hub.payments.values() if fx_of(p) is not None)} FX bill payments, "
        f"{len(hub.deliveries)} webhook deliveries "
        f"({sum(1 for d in hub.deliveries if d['status'] == 'delivered')} delivered, "
        f"{sum(d['attempts'] for d in hub.deliveries)} attempts, {len(books.webhooks)} received)"
    )


# ---- figures -----------------------------------------------------------------------------------


@dataclass
class Figures:
    """Jepsen-style counts: all must be 0 but operations and acknowledged."""

    operations: int = 0
    acknowledged: int = 0
    duplicates: int = 0
    money_created: int = 0
    money_lost: int = 0
    stuck: int = 0
    five_xx: int = 0
    crashes: int = 0
    steps: int = 0
    cut: int = 0  # requests a kill -9 left without an answer (then retried)
    rate_limited: int = 0  # 429 answers (retried a second later)

    @classmethod
    def of(cls, history: History, violations: Iterable[Violation], crashes: int, steps: int) -> Figures:
        figures = cls(crashes=crashes, steps=steps)
        for op in history:
            figures.operations += 1
            status = op.status
            if status is not None and 200 <= status < 300:
                figures.acknowledged += 1
            figures.five_xx += sum(1 for t in op.tries if is_5xx(t))
            figures.cut += int(any(t.status is None for t in op.tries))
            figures.rate_limited += sum(1 for t in op.tries if t.status == 429)
        for v in violations:
            figures.duplicates += v.duplicates
            if v.invariant in (4, 5, 6):
                figures.money_created += v.created
                figures.money_lost += v.lost
            figures.stuck += int(v.stuck)
        return figures

    def table(self, title: str) -> str:
        rows = [
            ("operations", self.operations),
            ("acknowledged", self.acknowledged),
            ("duplicates", self.duplicates),
            ("money created", self.money_created),
            ("money lost", self.money_lost),
            ("stuck", self.stuck),
            ("5xx", self.five_xx),
        ]
        lines = [
            title,
            f"  (steps {self.steps}, gateway kill -9 {self.crashes}, requests cut by a kill {self.cut}, "
            f"429 retried {self.rate_limited})",
        ]
        lines += [f"  {name:<14}{value:>10}" for name, value in rows]
        return "\n".join(lines)


IDS = ("pay_", "re_", "acct_", "#")  # objects whose requests a report lists


def report(violations: list[Violation], history: History, per_invariant: int = 8) -> str:
    """The violations, grouped by invariant (at most ``per_invariant`` shown for each), each with the
    requests that touched its objects: a reproduction, in the order they were sent."""
    lines: list[str] = []
    by_invariant: dict[int, list[Violation]] = defaultdict(list)
    for v in violations:
        by_invariant[v.invariant].append(v)
    for number in sorted(by_invariant):
        group = by_invariant[number]
        lines.append(f"{TITLES[number]}  [{len(group)} violation(s)]")
        for v in group[:per_invariant]:
            lines.append(f"  - {', '.join(v.objects)}: {v.message}")
            seen: set[int] = set()
            for object_id in v.objects:
                if not object_id.startswith(IDS):  # a currency, an account or biller total: no requests
                    continue
                for op in history.about(object_id, limit=8):
                    if op.number not in seen and len(seen) < 10:
                        seen.add(op.number)
                        lines.append(f"      {op.summary()}")
        if len(group) > per_invariant:
            lines.append(f"  … and {len(group) - per_invariant} more like these")
    return "\n".join(lines)
