"""Growth (issue #13): preload a migrated payhub database with N card payments and their ledger, fast.

Each preloaded payment is what a card payment writes through the gateway (one succeeded and one
declined payment were made with the in-process connector and their rows read back to copy the
shape): the ``payments`` row, its ``authorize`` attempt, a ledger transaction with its two balanced
entries on the tenant's system accounts (connector receivable → tenant clearing, the accounts
``gateway.store.ledger`` creates on first use), the ``payment.succeeded`` event carrying the
payment's JSON, and — for payments younger than the idempotency retention — the stored idempotent
response. One payment in ``MIX`` is a top-up of its customer's stored balance (``topup.collect``:
receivable → ``acct_…``), so balances and statements exist; one in ``MIX`` is declined by the
issuer (``failed``, its decline code on the payment and the attempt, ``payment.failed``, no ledger),
so status filters have something to tell apart.

Rows go in with binary COPY (asyncpg ``copy_records_to_table``) in batches, chronologically
(``created`` spread over the past ``days``), the way the history grows; the next batch is built in
a thread while the current one streams. The whole load is one transaction, so a failed load leaves
nothing behind. Within it the non-unique indexes of the filled tables are dropped and built again
at the end (sorting millions of keys once costs far less than keeping them up row by row; primary
keys stay and still refuse a duplicate id), and the session runs with ``session_replication_role =
replica``: the per-row triggers (the deferred balance check, the balance trigger, the webhook
fan-out, foreign keys) are skipped, so the load writes balanced transactions and adds the top-ups
to the stored balances itself, and :func:`verify` checks both invariants in SQL afterwards. Without
the privilege for that (not a superuser) the triggers run and keep the books (slowly). A
``VACUUM (ANALYZE)`` and a checkpoint close the load, so the benchmark starts on a settled database.

Not preloaded: audit rows (the chain is linked and signed by the sealer with the gateway's key: rows
written here would be unsealed, and the sealer would spend the benchmark sealing them), risk
velocity counters (bounded by their 24 h window, not by history) and vault cards (one per card, not
per payment).

    python -m load.growth --dsn postgresql://postgres@127.0.0.1:5432/payhub_growth --rows 1000000 --migrate
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import random
import string
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import orjson

from gateway import ids
from gateway.store import events as events_store
from gateway.store import ledger
from gateway.store import payments as payment_store
from gateway.store import risk as risk_store
from gateway.store.migrate import latest_version, migrate
from gateway.store.types import Connection
from gateway.workers.pruner import RETENTION_HOURS

# The mix, by payment number: one in MIX tops up its customer's stored balance, one in MIX is
# declined by the issuer, the rest are card payments to the tenant.
MIX = 20
TOPUP = MIX - 1
DECLINED = MIX // 2
BATCH = 25_000  # payments per COPY transaction: ~150k rows over the six tables
DAYS = 90.0
CONNECTOR = "iso8583_card"  # what config/bench.toml routes card payments to
CURRENCY = "CNY"  # the bench's card payments (load/payments_loop.py)
RULESET = "2ca7e9824b5c"  # display only: the risk decision's ruleset version, as the dev rules show it

# The tables preload writes, in the order a batch writes them (foreign keys hold in that order).
TABLES = (
    "payments",
    "payment_attempts",
    "ledger_transactions",
    "ledger_entries",
    "events",
    "idempotency_keys",
    "ledger_accounts",
)

PAYMENT_COLUMNS = (
    "id",
    "tenant",
    "status",
    "amount",
    "currency",
    "amount_authorized",
    "amount_captured",
    "amount_refunded",
    "method",
    "payment_method",
    "capture_method",
    "customer_id",
    "customer",
    "destination_account",
    "description",
    "metadata",
    "connector",
    "connector_reference",
    "risk",
    "risk_keys",
    "created",
    "updated",
    "failure_code",
    "failure_message",
)
ATTEMPT_COLUMNS = (
    "id",
    "payment_id",
    "tenant",
    "operation",
    "connector",
    "amount",
    "status",
    "connector_reference",
    "decline_code",
    "raw_code",
    "tries",
    "next_check",
    "created",
    "updated",
)
TRANSACTION_COLUMNS = ("id", "tenant", "kind", "payment_id", "created")
ENTRY_COLUMNS = ("transaction_id", "account_id", "bucket", "amount", "currency", "created")
EVENT_COLUMNS = ("id", "tenant", "type", "object_id", "data", "created")
KEY_COLUMNS = (
    "tenant",
    "key",
    "request_method",
    "request_path",
    "request_hash",
    "recovery_point",
    "locked_until",
    "object_id",
    "response_status",
    "response_body",
    "created",
    "finished",
)

# ---- ids: the gateway's shape (gateway/ids.py: prefix, time part, random base62), made in bulk ----------

_BASE62 = (string.ascii_letters + string.digits).encode()
_BASE36 = (string.digits + string.ascii_uppercase).encode()
# Bytes at or above the largest multiple of the alphabet's size are dropped, so every character is
# equally likely (248 = 4 * 62, 252 = 7 * 36); the rest map to the alphabet by remainder.
_TO_BASE62 = bytes(_BASE62[b % 62] for b in range(256))
_TO_BASE36 = bytes(_BASE36[b % 36] for b in range(256))
_DROP62 = bytes(range(248, 256))
_DROP36 = bytes(range(252, 256))
ID_LENGTH = 24


def _random_text(length: int, table: bytes, drop: bytes) -> str:
    out = b""
    while len(out) < length:
        missing = length - len(out)
        out += os.urandom(missing + missing // 16 + 64).translate(table, drop)
    return out[:length].decode("ascii")


def new_ids(prefix: str, count: int, created_us: Sequence[int] | None = None) -> list[str]:
    """``count`` ids like ``gateway.ids.new_id(prefix)`` made at ``created_us`` (microseconds since the
    epoch, one per id): the time part, then random base62 characters of OS randomness. Without times,
    24 random characters: vault token ids (``crypto.vault.new_token_id``)."""
    head = prefix + "_"
    if created_us is None:
        chars = _random_text(ID_LENGTH * count, _TO_BASE62, _DROP62)
        return [head + chars[i : i + ID_LENGTH] for i in range(0, ID_LENGTH * count, ID_LENGTH)]
    tail = ids.RANDOM_CHARS
    chars = _random_text(tail * count, _TO_BASE62, _DROP62)
    return [
        head + ids.time_part(created_us[n] // 1000) + chars[n * tail : (n + 1) * tail] for n in range(count)
    ]


def _references(count: int) -> list[str]:
    """Connector references: 12 base-36 characters, like the ISO 8583 connector's RRN."""
    chars = _random_text(12 * count, _TO_BASE36, _DROP36)
    return [chars[i : i + 12] for i in range(0, 12 * count, 12)]


# ---- customers --------------------------------------------------------------------------------------


def history_customers(customers: int = 10_000) -> list[str]:
    """The customer ids preload spreads payments over (the bench's card payments use ``cus_<n>`` too)."""
    return [f"cus_{n}" for n in range(customers)]


_BRANDS = (("visa", "411111"), ("mastercard", "555555"), ("unionpay", "622202"), ("amex", "378282"))
_DESCRIPTIONS = (None, None, "June electricity", "Water bill", "Mobile top-up", "Broadband", "Gas bill")


@dataclass(frozen=True, slots=True)
class Customer:
    """What a customer's payments repeat: one card (its display data and vault token), the JSON
    columns built once, and the stored balance its top-ups fund."""

    id: str
    account: str
    payment_method: str  # JSON text
    customer: str  # JSON text
    risk_keys: str  # JSON text
    payment_method_raw: orjson.Fragment = field(repr=False)
    customer_raw: orjson.Fragment = field(repr=False)


def _customer(n: int, customer_id: str, account: str, rng: random.Random, token: str) -> Customer:
    brand, bin_ = _BRANDS[n % len(_BRANDS)]
    payment_method = orjson.dumps(
        {
            "card": {
                "bin": bin_,
                "brand": brand,
                "last4": f"{rng.randrange(10_000):04d}",
                "token": token,
                "exp_year": 2027 + n % 5,
                "exp_month": 1 + n % 12,
            },
            "type": "card",
        }
    )
    # 198.18.0.0/15: the benchmarking range (RFC 2544), one address per customer.
    ip = f"198.{18 + (n >> 16) % 2}.{(n >> 8) % 256}.{n % 256}"
    customer = orjson.dumps({"id": customer_id, "ip": ip})
    fingerprint = hashlib.sha256(f"growth card {token}".encode()).hexdigest()
    risk_keys = orjson.dumps([["card", fingerprint], ["customer", customer_id], ["ip", ip]])
    return Customer(
        customer_id,
        account,
        payment_method.decode(),
        customer.decode(),
        risk_keys.decode(),
        orjson.Fragment(payment_method),
        orjson.Fragment(customer),
    )


# ---- one batch of rows ---------------------------------------------------------------------------------

_RISK = f'{{"score": 0, "reasons": [], "ruleset": "{RULESET}", "decision": "allow"}}'
_RISK_RAW = orjson.Fragment(_RISK.encode())
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class Batch:
    payments: list[tuple[Any, ...]] = field(default_factory=list)
    attempts: list[tuple[Any, ...]] = field(default_factory=list)
    transactions: list[tuple[Any, ...]] = field(default_factory=list)
    entries: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    keys: list[tuple[Any, ...]] = field(default_factory=list)
    topped_up: dict[str, int] = field(default_factory=dict)  # account → amount added by this batch

    @property
    def rows(self) -> int:
        return (
            len(self.payments)
            + len(self.attempts)
            + len(self.transactions)
            + len(self.entries)
            + len(self.events)
            + len(self.keys)
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a batch needs to know: who pays, on which accounts, over which time span."""

    tenant: str
    currency: str
    connector: str
    rows: int
    customers: tuple[Customer, ...]
    receivable: str  # system account ids, as gateway.store.ledger names them
    clearing: str
    start_us: int  # microseconds since the epoch of the oldest payment's slot
    span_us: int
    keys_from_us: int  # payments created at or after this keep their idempotency key (retention)


def _stamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")  # gateway.views.render.timestamp


# ISO 8583 declines as the card connector maps them (connectors/iso8583_card/transformers.py).
_DECLINES = (
    ("05", "do_not_honor", "do not honor"),
    ("51", "insufficient_funds", "insufficient funds"),
    ("54", "expired_card", "expired card"),
    ("N7", "incorrect_cvc", "CVV2 mismatch"),
)


def _rendered(payment: tuple[Any, ...], customer: Customer, failure: tuple[str, str, str] | None) -> bytes:
    """The payment as GET /v1/payments/{id} renders it: its event's data and its stored response."""
    row = dict(zip(PAYMENT_COLUMNS, payment, strict=True))
    return orjson.dumps(
        {
            "id": row["id"],
            "status": row["status"],
            "amount": row["amount"],
            "currency": row["currency"],
            "amount_captured": row["amount_captured"],
            "amount_refunded": 0,
            "capture_method": "automatic",
            "payment_method": customer.payment_method_raw,
            "customer": customer.customer_raw,
            "risk": _RISK_RAW,
            "next_action": None,
            "bill_posting": None,
            "connector": row["connector"],
            "connector_reference": row["connector_reference"],
            "failure": {"code": failure[1], "message": failure[2]} if failure else None,
            "description": row["description"],
            "metadata": {},
            "created": _stamp(row["created"]),
            "updated": _stamp(row["updated"]),
            "destination": row["destination_account"],
            "fx": None,
            "object": "payment",
        }
    )


def make_batch(plan: Plan, first: int, count: int, seed: int) -> Batch:
    """Payments ``first`` … ``first + count - 1`` of the plan, oldest first, with everything they write.

    Payment ``k`` is a top-up when ``k % MIX == TOPUP``, declined when ``k % MIX == DECLINED`` (no
    ledger: nothing was captured), a plain card payment to the tenant's clearing account otherwise.
    """
    rng = random.Random(seed)
    batch = Batch()
    step = plan.span_us / plan.rows
    times = [plan.start_us + int((first + i + rng.random()) * step) for i in range(count)]
    payment_ids = new_ids("pay", count, times)
    attempt_ids = new_ids("att", count, times)
    transaction_ids = new_ids("ltx", count, times)
    event_ids = new_ids("evt", count, times)
    references = _references(count)
    tenant, currency, connector = plan.tenant, plan.currency, plan.connector
    customers, n_customers = plan.customers, len(plan.customers)
    topped_up = batch.topped_up
    for i in range(count):
        k = first + i
        created_us = times[i]
        created = _EPOCH + timedelta(microseconds=created_us)
        # Phase 3 (apply) commits a few ms after phase 1: the attempt, ledger and event carry its time.
        updated = created + timedelta(microseconds=rng.randrange(2_000, 60_000))
        customer = customers[rng.randrange(n_customers)]
        payment_id, reference = payment_ids[i], references[i]
        role = k % MIX
        destination = customer.account if role == TOPUP else None
        failure = _DECLINES[rng.randrange(len(_DECLINES))] if role == DECLINED else None
        if role == TOPUP:
            amount = rng.choice((5_000, 10_000, 20_000, 50_000, 100_000))
            description = None
        else:
            amount = int(10 ** rng.uniform(2.0, 5.3))  # 1 to ~2,000 CNY, most of them small
            description = _DESCRIPTIONS[rng.randrange(len(_DESCRIPTIONS))]
        captured = 0 if failure else amount
        payment = (
            payment_id,
            tenant,
            "failed" if failure else "succeeded",
            amount,
            currency,
            captured,
            captured,
            0,
            "card",
            customer.payment_method,
            "automatic",
            customer.id,
            customer.customer,
            destination,
            description,
            "{}",
            connector,
            reference,
            _RISK,
            customer.risk_keys,
            created,
            updated,
            failure[1] if failure else None,
            failure[2] if failure else None,
        )
        batch.payments.append(payment)
        batch.attempts.append(
            (
                attempt_ids[i],
                payment_id,
                tenant,
                "authorize",
                connector,
                amount,
                "failed" if failure else "succeeded",
                reference,
                failure[1] if failure else None,
                failure[0] if failure else None,
                1,
                None,
                created,
                updated,
            )
        )
        if failure is None:
            transaction_id = transaction_ids[i]
            target = destination or plan.clearing
            kind = "topup.collect" if destination else "payment.collect"
            batch.transactions.append((transaction_id, tenant, kind, payment_id, updated))
            batch.entries.append((transaction_id, plan.receivable, "available", -amount, currency, updated))
            batch.entries.append((transaction_id, target, "available", amount, currency, updated))
            if destination:
                topped_up[destination] = topped_up.get(destination, 0) + amount
        body = _rendered(payment, customer, failure)
        event = "payment.failed" if failure else "payment.succeeded"
        batch.events.append((event_ids[i], tenant, event, payment_id, body.decode(), updated))
        if created_us >= plan.keys_from_us:
            batch.keys.append(_key(payment, body))
    return batch


def _key(payment: tuple[Any, ...], body: bytes) -> tuple[Any, ...]:
    """The idempotency key of the request that made the payment, finished with its response."""
    row = dict(zip(PAYMENT_COLUMNS, payment, strict=True))
    destination = row["destination_account"]
    path = f"/v1/accounts/{destination}/topups" if destination else "/v1/payments"
    return (
        row["tenant"],
        os.urandom(12).hex(),
        "POST",
        path,
        os.urandom(32),  # the request's SHA-256
        "finished",
        None,
        row["id"],
        200,
        body,
        row["created"] - timedelta(milliseconds=5),
        row["updated"],
    )


# ---- loading ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadStats:
    payments: int
    rows: int  # every row written (payments, attempts, ledger transactions and entries, events, keys)
    seconds: float  # the COPY phase
    index_seconds: float  # building the deferred indexes again (and the commit)
    vacuum_seconds: float  # VACUUM (ANALYZE) afterwards
    replica: bool  # triggers were skipped (session_replication_role = replica)
    indexes_rebuilt: int

    @property
    def total_seconds(self) -> float:
        return self.seconds + self.index_seconds + self.vacuum_seconds

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def payments_per_second(self) -> float:
        return self.payments / self.seconds if self.seconds else 0.0


async def _connect(dsn: str) -> asyncpg.Connection[Any]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        dsn, server_settings={"application_name": "payhub-growth", "synchronous_commit": "off"}
    )
    return conn


async def _skip_triggers(conn: asyncpg.Connection[Any]) -> bool:
    """True when this session skips triggers (superuser); False: they run (and do the bookkeeping)."""
    try:
        await conn.execute("SET session_replication_role = replica")
    except asyncpg.InsufficientPrivilegeError:
        return False
    return True


async def _accounts(
    conn: asyncpg.Connection[Any],
    *,
    tenant: str,
    currency: str,
    connector: str,
    customers: int,
    opened: datetime,
) -> tuple[list[Customer], str, str]:
    """The tenant's system accounts (created as the gateway's first posting would) and one stored
    balance per customer: an existing one is reused, so a second preload adds to the same balances."""
    receivable = ledger.SystemAccount(tenant, "connector_receivable", connector, currency)
    clearing = ledger.SystemAccount(tenant, "tenant_clearing", "default", currency)
    await conn.execute(
        """
        INSERT INTO ledger_accounts (id, tenant, kind, currency, reference)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
        ON CONFLICT (id) DO NOTHING
        """,
        [receivable.id, clearing.id],
        [tenant, tenant],
        [receivable.kind, clearing.kind],
        [currency, currency],
        [receivable.reference, clearing.reference],
    )
    ids = history_customers(customers)
    existing = {
        row["customer_id"]: row["id"]
        for row in await conn.fetch(
            """
            SELECT DISTINCT ON (customer_id) customer_id, id FROM ledger_accounts
            WHERE tenant = $1 AND kind = 'customer_balance' AND currency = $2
              AND customer_id = ANY($3::text[])
            ORDER BY customer_id, created, id
            """,
            tenant,
            currency,
            ids,
        )
    }
    missing = [customer for customer in ids if customer not in existing]
    opened_us = (opened - _EPOCH) // timedelta(microseconds=1)
    new = dict(zip(missing, new_ids("acct", len(missing), [opened_us] * len(missing)), strict=True))
    await conn.copy_records_to_table(
        "ledger_accounts",
        records=[
            (account, tenant, "customer_balance", currency, customer, 0, 0, "{}", opened)
            for customer, account in new.items()
        ],
        columns=(
            "id",
            "tenant",
            "kind",
            "currency",
            "customer_id",
            "available",
            "pending",
            "metadata",
            "created",
        ),
    )
    existing.update(new)
    rng = random.Random(customers)
    tokens = new_ids("tok", len(ids))
    people = [_customer(n, cid, existing[cid], rng, tokens[n]) for n, cid in enumerate(ids)]
    return people, receivable.id, clearing.id


def _now_us() -> int:
    return time.time_ns() // 1000


async def _copy(conn: asyncpg.Connection[Any], batch: Batch) -> None:
    await conn.copy_records_to_table("payments", records=batch.payments, columns=PAYMENT_COLUMNS)
    await conn.copy_records_to_table("payment_attempts", records=batch.attempts, columns=ATTEMPT_COLUMNS)
    await conn.copy_records_to_table(
        "ledger_transactions", records=batch.transactions, columns=TRANSACTION_COLUMNS
    )
    await conn.copy_records_to_table("ledger_entries", records=batch.entries, columns=ENTRY_COLUMNS)
    await conn.copy_records_to_table("events", records=batch.events, columns=EVENT_COLUMNS)
    if batch.keys:
        await conn.copy_records_to_table("idempotency_keys", records=batch.keys, columns=KEY_COLUMNS)


async def _drop_secondary_indexes(conn: asyncpg.Connection[Any]) -> list[str]:
    """Drop the non-unique indexes of the tables the load fills; return how to build them again.

    Primary keys and unique indexes stay (they still refuse a duplicate id during the load). Called
    inside the load's transaction: a load that fails leaves the schema as it found it.
    """
    rows = await conn.fetch(
        """
        SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition
        FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
        WHERE t.oid = ANY(SELECT to_regclass(name) FROM unnest($1::text[]) AS name)
          AND NOT i.indisunique AND NOT i.indisprimary AND i.indisvalid
        ORDER BY t.relname, name
        """,
        list(TABLES),
    )
    for row in rows:
        await conn.execute(f"DROP INDEX {row['name']}")
    return [row["definition"] for row in rows]


async def _add_to_balances(conn: asyncpg.Connection[Any], amounts: dict[str, int]) -> None:
    """What ledger_apply_entry does entry by entry when triggers run, once per account."""
    accounts = sorted(amounts)
    await conn.execute(
        """
        UPDATE ledger_accounts a SET available = a.available + t.amount
        FROM unnest($1::text[], $2::bigint[]) AS t(id, amount) WHERE a.id = t.id
        """,
        accounts,
        [amounts[account] for account in accounts],
    )


async def _settle(conn: asyncpg.Connection[Any]) -> None:
    """VACUUM, not only ANALYZE: it sets the visibility map (index-only scans, as on a database
    autovacuum keeps up with) and the hint bits, so neither autovacuum nor first reads rewrite these
    pages while the benchmark measures; the checkpoint leaves it no dirty backlog to flush either."""
    for table in TABLES:
        await conn.execute(f"VACUUM (ANALYZE) {table}")
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CHECKPOINT")


class NotMigrated(RuntimeError):
    """The database lacks payhub's latest migrations (preload writes the schema it knows)."""


Progress = Callable[[int, int, float], None]  # (payments done, rows done, seconds so far)


async def _stream(
    conn: asyncpg.Connection[Any],
    plan: Plan,
    *,
    batch: int,
    seed: int,
    progress: Progress | None,
    started: float,
) -> tuple[int, int, dict[str, int]]:
    """COPY the plan's payments batch by batch, the next batch built in a thread while this one
    streams to PostgreSQL; return (payments, rows, amount topped up per account)."""
    rows = plan.rows

    def build(index: int) -> Batch:
        first = index * batch
        return make_batch(plan, first, min(batch, rows - first), seed + index)

    batches = math.ceil(rows / batch)
    done_payments = done_rows = 0
    topped_up: dict[str, int] = {}
    upcoming = asyncio.ensure_future(asyncio.to_thread(build, 0))
    try:
        for index in range(batches):
            current = await upcoming
            if index + 1 < batches:
                upcoming = asyncio.ensure_future(asyncio.to_thread(build, index + 1))
            await _copy(conn, current)
            for account, amount in current.topped_up.items():
                topped_up[account] = topped_up.get(account, 0) + amount
            done_payments += len(current.payments)
            done_rows += current.rows
            if progress is not None:
                progress(done_payments, done_rows, time.perf_counter() - started)
    finally:
        # A failed COPY: let the batch being built finish before the transaction rolls back.
        if not upcoming.done():
            await asyncio.wait([upcoming])
        if upcoming.done() and not upcoming.cancelled():
            upcoming.exception()  # retrieved: a second failure is not reported over the first
    return done_payments, done_rows, topped_up


async def load(
    dsn: str,
    rows: int,
    *,
    tenant: str = "acme",
    customers: int = 10_000,
    currency: str = CURRENCY,
    connector: str = CONNECTOR,
    batch: int = BATCH,
    days: float = DAYS,
    seed: int | None = None,
    defer_indexes: bool = True,
    skip_triggers: bool = True,
    settle: bool = True,
    progress: Progress | None = None,
) -> LoadStats:
    """Preload ``rows`` card payments (and all they write); return what it took.

    One transaction: a load that fails leaves nothing behind. ``defer_indexes`` drops the
    non-unique indexes of the filled tables first and builds them again at the end, sorted, which
    at millions of rows costs far less than keeping them up row by row (the transaction holds
    ACCESS EXCLUSIVE locks on those tables meanwhile: preload before starting the gateway).
    ``skip_triggers=False`` loads with the database's triggers on (they keep the balances and check
    every transaction at commit): slow, but it is the schema itself vouching for the rows.
    ``settle=False`` skips the closing VACUUM (ANALYZE) and checkpoint.
    """
    if rows < 1 or customers < 1 or batch < 1:
        raise ValueError("rows, customers and batch must be positive")
    conn = await _connect(dsn)
    try:
        migrated = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if (
            not migrated
            or await conn.fetchval("SELECT max(version) FROM schema_migrations") < latest_version()
        ):
            raise NotMigrated("the database is not migrated to payhub's latest schema: run `payhub migrate`")
        replica = skip_triggers and await _skip_triggers(conn)
        now_us = _now_us() - 60_000_000  # the newest preloaded payment is a minute old
        span_us = int(days * 86_400e6)
        base_seed = seed if seed is not None else int.from_bytes(os.urandom(8))
        started = time.perf_counter()
        async with conn.transaction():
            # Opened a day before the oldest preloaded payment.
            opened = _EPOCH + timedelta(microseconds=now_us - span_us - 86_400_000_000)
            people, receivable, clearing = await _accounts(
                conn,
                tenant=tenant,
                currency=currency,
                connector=connector,
                customers=customers,
                opened=opened,
            )
            plan = Plan(
                tenant=tenant,
                currency=currency,
                connector=connector,
                rows=rows,
                customers=tuple(people),
                receivable=receivable,
                clearing=clearing,
                start_us=now_us - span_us,
                span_us=span_us,
                keys_from_us=now_us - int(RETENTION_HOURS * 3600e6),
            )
            # With the triggers on, their per-row lookups need the indexes (and a deferred check
            # still pending would forbid building them in this transaction).
            deferred = await _drop_secondary_indexes(conn) if defer_indexes and replica else []
            done_payments, done_rows, topped_up = await _stream(
                conn, plan, batch=batch, seed=base_seed, progress=progress, started=started
            )
            if replica:
                await _add_to_balances(conn, topped_up)
            copied = time.perf_counter()
            await conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
            for definition in deferred:
                await conn.execute(definition)
        indexed = time.perf_counter()
        if settle:
            await _settle(conn)
        vacuumed = time.perf_counter()
        return LoadStats(
            payments=done_payments,
            rows=done_rows,
            seconds=copied - started,
            index_seconds=indexed - copied,
            vacuum_seconds=vacuumed - indexed,
            replica=replica,
            indexes_rebuilt=len(deferred),
        )
    finally:
        await conn.close()


async def preload(dsn: str, rows: int, *, tenant: str = "acme", customers: int = 10_000) -> None:
    """``make bench SCALE=…``: preload ``rows`` payments (and their ledger) into a migrated database."""
    await load(dsn, rows, tenant=tenant, customers=customers)


# ---- checks and figures ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    transactions: int  # ledger transactions checked
    unbalanced: int  # of those, not summing to zero per currency (or with no entries)
    accounts: int  # customer balances checked
    mismatched: int  # of those, whose stored balance is not the sum of their entries

    @property
    def ok(self) -> bool:
        return self.unbalanced == 0 and self.mismatched == 0


async def verify(dsn: str, *, sample_percent: float | None = None) -> Check:
    """Every ledger transaction balances and every customer balance equals the sum of its entries.

    ``sample_percent`` checks the transactions of a block sample of that size (TABLESAMPLE SYSTEM)
    instead of all of them; balances are always checked in full (one index range per account).
    """
    conn = await _connect(dsn)
    try:
        await conn.execute("SET work_mem = '256MB'")
        sample = "TABLESAMPLE SYSTEM ($1)" if sample_percent is not None else ""
        # One statement: the transactions in the sample (or all), and those whose entries do not sum
        # to zero in some currency or that have no entries at all.
        counted = await conn.fetchrow(
            f"""
            WITH t AS (SELECT id FROM ledger_transactions {sample}),
            sums AS (
                SELECT e.transaction_id, e.currency, sum(e.amount) AS total
                FROM ledger_entries e JOIN t ON t.id = e.transaction_id
                GROUP BY e.transaction_id, e.currency
            )
            SELECT (SELECT count(*) FROM t),
                   (SELECT count(DISTINCT transaction_id) FROM sums WHERE total <> 0)
                   + (SELECT count(*) FROM t
                      WHERE NOT EXISTS (SELECT FROM sums WHERE sums.transaction_id = t.id))
            """,
            *([sample_percent] if sample_percent is not None else []),
        )
        balances = await conn.fetchrow(
            """
            SELECT count(*),
                   count(*) FILTER (WHERE a.available <> s.available OR a.pending <> s.pending)
            FROM ledger_accounts a CROSS JOIN LATERAL (
                SELECT coalesce(sum(e.amount) FILTER (WHERE e.bucket = 'available'), 0) AS available,
                       coalesce(sum(e.amount) FILTER (WHERE e.bucket = 'pending'), 0) AS pending
                FROM ledger_entries e WHERE e.account_id = a.id
            ) s
            WHERE a.kind = 'customer_balance'
            """
        )
        assert counted is not None  # aggregates always return a row
        assert balances is not None
        return Check(counted[0], counted[1], balances[0], balances[1])
    finally:
        await conn.close()


async def sizes(dsn: str) -> list[tuple[str, int, int]]:
    """(table, table bytes including TOAST, index bytes) for payhub's tables, largest first."""
    conn = await _connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT c.relname, pg_table_size(c.oid) AS heap, pg_indexes_size(c.oid) AS indexes
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()
            ORDER BY pg_table_size(c.oid) + pg_indexes_size(c.oid) DESC, c.relname
            """
        )
        return [(row["relname"], row["heap"], row["indexes"]) for row in rows]
    finally:
        await conn.close()


async def balance_accounts(dsn: str, *, tenant: str = "acme", limit: int = 1000) -> list[str]:
    """Customer balance accounts with entries, for statement (``/entries``) and balance reads."""
    conn = await _connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT id FROM ledger_accounts
            WHERE tenant = $1 AND kind = 'customer_balance' AND available > 0
            ORDER BY created DESC, id DESC LIMIT $2
            """,
            tenant,
            limit,
        )
        return [row["id"] for row in rows]
    finally:
        await conn.close()


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def size_table(rows: Sequence[tuple[str, int, int]], *, top: int = 12) -> str:
    lines = [f"{'table':<24} {'table+toast':>12} {'indexes':>12} {'total':>12}"]
    for name, heap, indexes in rows[:top]:
        lines.append(f"{name:<24} {human(heap):>12} {human(indexes):>12} {human(heap + indexes):>12}")
    total_heap = sum(row[1] for row in rows)
    total_indexes = sum(row[2] for row in rows)
    lines.append(
        f"{'all ' + str(len(rows)) + ' tables':<24} {human(total_heap):>12} {human(total_indexes):>12} "
        f"{human(total_heap + total_indexes):>12}"
    )
    return "\n".join(lines)


# ---- the history queries, exactly as the gateway sends them ----------------------------------------------


class _Recorder:
    """Stands in for a connection: records the statements a store function sends (answers nothing)."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.statements.append((sql, args))
        return []

    async def fetchrow(self, sql: str, *args: Any) -> None:
        self.statements.append((sql, args))


async def _payment_pages(
    conn: Connection, tenant: str, customer: str
) -> list[tuple[str, payment_store.PaymentFilters, str | None, str | None]]:
    """GET /v1/payments requests worth a plan: (label, filters, starting_after, ending_before)."""
    deep = await conn.fetchval(
        "SELECT id FROM payments WHERE tenant = $1 ORDER BY created DESC, id DESC OFFSET "
        "(SELECT (reltuples * 0.75)::bigint FROM pg_class WHERE relname = 'payments') LIMIT 1",
        tenant,
    )
    deep_customer = await conn.fetchval(
        "SELECT id FROM payments WHERE tenant = $1 AND customer_id = $2 "
        "ORDER BY created, id LIMIT 1 OFFSET 10",
        tenant,
        customer,
    )
    newest = await conn.fetchval("SELECT max(created) FROM payments WHERE tenant = $1", tenant)
    day = (newest - timedelta(days=31), newest - timedelta(days=30)) if newest else (None, None)
    filters = payment_store.PaymentFilters
    return [
        ("GET /v1/payments (first page)", filters(), None, None),
        ("GET /v1/payments?starting_after=<75% deep>", filters(), deep, None),
        ("GET /v1/payments?ending_before=<75% deep>", filters(), None, deep),
        (f"GET /v1/payments?customer={customer}", filters(customer=customer), None, None),
        (
            f"GET /v1/payments?customer={customer}&starting_after=<its 11th oldest>",
            filters(customer=customer),
            deep_customer,
            None,
        ),
        ("GET /v1/payments?status=succeeded (90%)", filters(status="succeeded"), None, None),
        ("GET /v1/payments?status=failed (5%)", filters(status="failed"), None, None),
        (
            "GET /v1/payments?status=requires_capture (matches none)",
            filters(status="requires_capture"),
            None,
            None,
        ),
        (
            "GET /v1/payments?created_gte/lte=<one day a month ago>",
            filters(created_gte=day[0], created_lte=day[1]),
            None,
            None,
        ),
        ("GET /v1/payments?amount_gte=150000 (~4% of rows)", filters(amount_gte=150_000), None, None),
        # Filters no index leads with: the walk of (tenant, created) stops only after `limit` matches.
        ("GET /v1/payments?method=wallet (matches none)", filters(method="wallet"), None, None),
        ("GET /v1/payments?amount_gte=10000000 (matches none)", filters(amount_gte=10_000_000), None, None),
    ]


async def history_statements(
    conn: Connection, *, tenant: str = "acme", customer: str = "cus_42"
) -> list[tuple[str, str, tuple[Any, ...]]]:
    """(label, SQL, arguments) of the reads behind the history routes — and the card payment's own
    read of the customer's history (risk features) — built by the store functions themselves, with
    cursors and an account taken from the data."""
    recorder = _Recorder()
    fake = cast(Connection, recorder)
    labels: list[str] = []
    for label, where, after, before in await _payment_pages(conn, tenant, customer):
        await payment_store.list_payments(
            fake, tenant=tenant, filters=where, limit=10, starting_after=after, ending_before=before
        )
        labels.append(label)
    for label, event_filters in (
        ("GET /v1/events (first page)", events_store.EventFilters()),
        ("GET /v1/events?type=payment.succeeded", events_store.EventFilters(type="payment.succeeded")),
    ):
        await events_store.list_events(
            fake, tenant=tenant, filters=event_filters, limit=10, starting_after=None, ending_before=None
        )
        labels.append(label)
    account = await conn.fetchval(
        "SELECT id FROM ledger_accounts WHERE tenant = $1 AND customer_id = $2 AND kind = 'customer_balance' "
        "ORDER BY created, id LIMIT 1",
        tenant,
        customer,
    )
    if account is not None:
        await ledger.get_customer_account(fake, tenant=tenant, account_id=account)
        labels.append(f"GET /v1/accounts/{{id}} ({customer}'s balance)")
        await ledger.list_entries(fake, account_id=account, limit=11, before_id=None, after_id=None)
        labels.append("GET /v1/accounts/{id}/entries (first page)")
        middle = await conn.fetchval(
            "SELECT id FROM ledger_entries WHERE account_id = $1 ORDER BY id LIMIT 1 OFFSET 10", account
        )
        if middle is not None:
            await ledger.list_entries(fake, account_id=account, limit=11, before_id=middle, after_id=None)
            labels.append("GET /v1/accounts/{id}/entries?starting_after=<its 11th oldest>")
    keys = risk_store.RiskKeys(pairs=(("customer", customer),), customer_id=customer, device_id="dev_growth")
    rider = risk_store.feature_rider(tenant, keys, [("customer", customer)])
    recorder.statements.append((rider.select(1), rider.args))
    labels.append(f"POST /v1/payments: risk features of {customer} (first seen, device known, ...)")
    return [(label, sql, args) for label, (sql, args) in zip(labels, recorder.statements, strict=True)]


def _literal(value: Any) -> str:
    """A SQL literal of a statement argument (EXECUTE takes no protocol parameters)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool | int):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, datetime):
        value = value.isoformat()
    elif isinstance(value, list | tuple):
        quoted = ('"' + str(item).replace("\\", "\\\\").replace('"', '\\"') + '"' for item in value)
        value = "{" + ",".join(quoted) + "}"
    return "'" + str(value).replace("'", "''") + "'"


async def explain(dsn: str, *, tenant: str = "acme", customer: str = "cus_42", generic: bool = False) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of each history read with its arguments bound: the custom plan
    the gateway's prepared statements run. ``generic``: the generic plan instead (PREPARE + EXECUTE
    under plan_cache_mode = force_generic_plan). Under the default ``auto`` PostgreSQL switches a
    prepared statement to its generic plan only when that plan is estimated no costlier than the
    custom ones; with LIMIT a parameter the generic plans here are estimated far costlier, so the
    gateway keeps the custom plans (pg_prepared_statements.generic_plans stays 0)."""
    conn = await _connect(dsn)
    try:
        await conn.execute("SET jit = off")  # as the gateway's pool runs (gateway/store/db.py)
        out: list[str] = []
        for label, sql, args in await history_statements(conn, tenant=tenant, customer=customer):
            await conn.fetch(sql, *args)  # warm: the plan measured is not the first read from disk
            if generic:
                await conn.execute("SET plan_cache_mode = force_generic_plan")
                await conn.execute(f"PREPARE growth_history AS {sql}")
                try:
                    values = ", ".join(_literal(arg) for arg in args)
                    plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE growth_history({values})")
                finally:
                    await conn.execute("DEALLOCATE growth_history")
                    await conn.execute("RESET plan_cache_mode")
            else:
                plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
            out.append(f"-- {label}\n" + "\n".join(row[0] for row in plan))
        return "\n\n".join(out)
    finally:
        await conn.close()


# ---- command line -------------------------------------------------------------------------------------


async def _main(args: argparse.Namespace) -> None:
    if args.migrate:
        conn = await asyncpg.connect(args.dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
    if args.rows:
        every = max(1, math.ceil(args.rows / args.batch / 20))
        calls = 0

        def report(payments: int, rows: int, seconds: float) -> None:
            nonlocal calls
            calls += 1
            if calls % every == 0 or payments == args.rows:
                print(
                    f"  {payments:>11,} payments  {rows:>12,} rows  {seconds:7.1f} s  "
                    f"{rows / seconds:9,.0f} rows/s",
                    file=sys.stderr,
                    flush=True,
                )

        stats = await load(
            args.dsn,
            args.rows,
            tenant=args.tenant,
            customers=args.customers,
            batch=args.batch,
            defer_indexes=not args.keep_indexes,
            progress=report,
        )
        print(
            f"preloaded {stats.payments:,} payments ({stats.rows:,} rows) in {stats.total_seconds:.1f} s: "
            f"COPY {stats.seconds:.1f} s ({stats.payments_per_second:,.0f} payments/s, "
            f"{stats.rows_per_second:,.0f} rows/s, triggers {'skipped' if stats.replica else 'on'}), "
            f"{stats.indexes_rebuilt} indexes built {stats.index_seconds:.1f} s, "
            f"VACUUM ANALYZE {stats.vacuum_seconds:.1f} s"
        )
        if not args.no_check:
            sample = None if args.full_check or args.rows <= 2_000_000 else 1.0
            started = time.perf_counter()
            check = await verify(args.dsn, sample_percent=sample)
            scope = "" if sample is None else f" (a {sample:g}% sample)"
            print(
                f"check ({time.perf_counter() - started:.1f} s): {check.unbalanced} unbalanced of "
                f"{check.transactions:,} ledger transactions{scope}; {check.mismatched} of "
                f"{check.accounts:,} customer balances differ from the sum of their entries"
            )
            if not check.ok:
                raise SystemExit("the ledger does not hold after the preload")
    print(size_table(await sizes(args.dsn)))
    if args.explain:
        print()
        print(await explain(args.dsn, tenant=args.tenant, generic=args.generic))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", required=True, help="a PostgreSQL URL (the database must exist)")
    parser.add_argument("--rows", type=int, default=0, help="payments to preload (0: only report)")
    parser.add_argument("--tenant", default="acme")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=BATCH, help="payments per COPY transaction")
    parser.add_argument(
        "--keep-indexes", action="store_true", help="keep every index up during the COPY (slower)"
    )
    parser.add_argument("--migrate", action="store_true", help="apply payhub's migrations first")
    parser.add_argument("--no-check", action="store_true", help="skip the ledger check after loading")
    parser.add_argument("--full-check", action="store_true", help="check every transaction, even past 2M")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN (ANALYZE, BUFFERS) the history reads")
    parser.add_argument("--generic", action="store_true", help="with --explain: the generic (prepared) plans")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
