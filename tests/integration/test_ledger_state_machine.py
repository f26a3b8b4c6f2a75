"""Hypothesis state machine over top-ups, balance payments and refunds, against real PostgreSQL
through the real services. After every step: each ledger transaction sums to zero, every stored
balance equals the sum of its entries and the model's balance, nothing is ever overdrawn, and no
payment is refunded beyond its capture."""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from connectors.inprocess import InProcessConnector
from crypto.keyring import LocalKek
from gateway import errors
from gateway.api.screen import screen_body
from gateway.identity import Identity
from gateway.metrics import Metrics
from gateway.services.idempotent import KeyedRequest
from gateway.services.payments import PaymentService
from gateway.services.refunds import RefundService
from gateway.services.settle import Settler
from gateway.store import ledger
from gateway.store.keyring import KeyringCache
from gateway.views import schemas

ACME = Identity("acme", "client", "spiffe://payhub.local/tenant/acme/role/client")
CARD = {
    "type": "card",
    "card": {"number": "4111111111111111", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
}
amounts = st.integers(min_value=1, max_value=50_000)


T = TypeVar("T")


def parse(body: dict[str, Any], model: type[T]) -> T:
    """As ``read_json`` decodes a request body (amount hook, then the input screen)."""
    return screen_body(msgspec.convert(body, model, dec_hook=schemas.decode_hook))  # type: ignore[no-any-return]


def keyed(path: str, body: Any) -> KeyedRequest:
    return KeyedRequest("acme", secrets.token_hex(8), "POST", path, msgspec.json.encode(body))


class LedgerMachine(RuleBasedStateMachine):
    accounts = Bundle("accounts")
    payments = Bundle("payments")

    harness: Harness  # set on the subclass the test builds

    def __init__(self) -> None:
        super().__init__()
        self.loop = self.harness.loop
        self.pool = self.harness.pool
        self.payments_service = self.harness.payments
        self.refunds_service = self.harness.refunds
        self.balance: dict[str, int] = {}
        self.refundable: dict[str, tuple[str, int]] = {}  # payment → (account, refundable)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @rule(target=accounts)
    def open_account(self) -> str:
        async def create() -> str:
            async with self.pool.acquire() as conn:
                account = await ledger.create_customer_account(
                    conn, tenant="acme", currency="CNY", customer_id=None, metadata="{}"
                )
            return account.id

        account_id: str = self.run(create())
        self.balance[account_id] = 0
        return account_id

    @rule(account=accounts, amount=amounts)
    def top_up(self, account: str, amount: int) -> None:
        body = {"amount": amount, "currency": "CNY", "payment_method": CARD}
        params = parse(body, schemas.CreateTopupRequest)
        outcome = self.run(self.payments_service.topup(ACME, account, params, keyed("/topups", body), None))
        assert msgspec.json.decode(outcome.body)["status"] == "succeeded"
        self.balance[account] += amount

    @rule(target=payments, account=accounts, amount=amounts)
    def pay_from_balance(self, account: str, amount: int) -> str:
        body = {
            "amount": amount,
            "currency": "CNY",
            "payment_method": {"type": "balance", "balance": {"account": account}},
        }
        params = parse(body, schemas.CreatePaymentRequest)
        outcome = self.run(self.payments_service.create(ACME, params, keyed("/v1/payments", body), None))
        payment = msgspec.json.decode(outcome.body)
        if amount <= self.balance[account]:
            assert payment["status"] == "succeeded"
            self.balance[account] -= amount
            self.refundable[payment["id"]] = (account, amount)
        else:
            assert (payment["status"], payment["failure"]["code"]) == ("failed", "insufficient_funds")
        return str(payment["id"])

    @rule(payment=payments, amount=st.none() | amounts)
    def refund(self, payment: str, amount: int | None) -> None:
        body: dict[str, Any] = {"payment": payment} | ({"amount": amount} if amount is not None else {})
        params = parse(body, schemas.CreateRefundRequest)
        account, left = self.refundable.get(payment, ("", 0))
        try:
            outcome = self.run(self.refunds_service.create(ACME, params, keyed("/v1/refunds", body), None))
        except errors.ApiError as exc:
            refused: errors.ApiError | None = exc
        else:
            refused = None
        if refused is not None:  # nothing refundable, or more than what is left
            assert refused.status in (400, 409)
            assert left == 0 or (amount is not None and amount > left)
            return
        refunded = msgspec.json.decode(outcome.body)["amount"]
        assert refunded == (left if amount is None else amount) and refunded <= left
        self.refundable[payment] = (account, left - refunded)
        self.balance[account] += refunded

    @invariant()
    def ledger_holds(self) -> None:
        async def check() -> None:
            async with self.pool.acquire() as conn:
                unbalanced = await conn.fetchval(
                    "SELECT count(*) FROM (SELECT 1 FROM ledger_entries GROUP BY transaction_id, currency "
                    "HAVING sum(amount) <> 0) t"
                )
                assert unbalanced == 0
                rows = await conn.fetch(
                    """
                    SELECT a.id, a.available, coalesce(sum(e.amount), 0) AS total
                    FROM ledger_accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id
                    WHERE a.kind = 'customer_balance' GROUP BY a.id
                    """
                )
                for row in rows:
                    assert row["available"] == row["total"] >= 0
                    if row["id"] in self.balance:
                        assert row["available"] == self.balance[row["id"]]
                over = await conn.fetchval(
                    "SELECT count(*) FROM payments WHERE amount_refunded > amount_captured"
                )
                assert over == 0

        self.run(check())


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    pool: asyncpg.Pool
    payments: PaymentService
    refunds: RefundService


def test_ledger_state_machine(db_url: str) -> None:
    loop = asyncio.new_event_loop()
    previous = asyncio.get_event_loop_policy().get_event_loop()
    asyncio.set_event_loop(loop)  # asyncpg binds its pool to the current loop
    pool = loop.run_until_complete(asyncpg.create_pool(db_url, min_size=1, max_size=4))
    try:
        keyring = KeyringCache(LocalKek(os.urandom(32)))
        connectors = {"inprocess": InProcessConnector()}
        settler = Settler(Metrics())
        harness = Harness(
            loop,
            pool,
            PaymentService(pool, keyring, connectors, {"card": ["inprocess"]}, settler),
            RefundService(pool, connectors, settler),
        )
        machine = type("BoundLedgerMachine", (LedgerMachine,), {"harness": harness})
        run = settings(
            max_examples=15, stateful_step_count=20, deadline=None, suppress_health_check=list(HealthCheck)
        )
        run(machine).TestCase().runTest()
    finally:
        loop.run_until_complete(pool.close())
        loop.close()
        asyncio.set_event_loop(previous)
