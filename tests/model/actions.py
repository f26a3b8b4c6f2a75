"""What the state machine does, as plain methods: each sends a request through the recording client,
checks the answer against the sandbox's documented outcome (DESIGN §12), and notes what it created.
The rules and the tour of :mod:`tests.model.test_conservation` call these."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import asyncpg

from crypto.pki import PkiPaths
from gateway.store.migrate import migrate
from tests.model import checks, faults
from tests.model import requests as rq
from tests.model.harness import (
    BREAKER_RESET,
    CHALLENGED,
    PHONE,
    REVIEWED,
    Client,
    History,
    Loop,
    Operation,
    Sandbox,
    Stack,
)
from tests.model.receiver import WebhookReceiver, model_receiver
from tests.support.pgcluster import Cluster

T = TypeVar("T")

IN_FLIGHT = (
    "card", "card", "slow_card", "timeout_card", "bank", "refund", "refund", "refund_async",
    "refund_async", "topup_card", "topup_bank", "bill_card", "bill_bank", "phone_card", "balance",
    "prepaid", "wallet",
)  # fmt: skip
SLOW_IN_FLIGHT = ("slow_card", "timeout_card", "bill_late")  # still in flight whenever the kill comes
HOLDS = (0.5, 1.0, 2.0, 3.0)  # seconds a fault other than a kill is held


@dataclass(frozen=True)
class Profile:
    examples: int
    steps: int
    crashes_per_example: int  # at least (the teardown adds crashes if the rules drew fewer)
    max_crashes: int  # at most per example: beyond it the kill rule does nothing (bounds the run's time)
    quiesce: float  # seconds to wait for everything to settle before the checks
    faults_per_class: int = 0  # at least, each fault class but gateway_kill (crashes count for it)
    max_faults: int = 0  # at most per example, those classes together (the teardown's top-ups aside)


@dataclass
class Note:
    """What the model knows about a payment it made."""

    kind: str  # card, manual, bank, wallet, prepaid, balance, topup, bill, phone
    amount: int
    plan: str = ""  # wallets: pay_now, pay_later, never, paid
    state: str = ""  # manual captures: held, captured, canceled


@dataclass
class World:
    """What lives for the whole test: the loop, the processes, the client, the records."""

    loop: Loop
    stack: Stack
    client: Client
    ops: Client  # the operator console (review queue)
    sandbox: Sandbox
    pool: asyncpg.Pool
    history: History
    profile: Profile
    workdir: Path
    receiver: WebhookReceiver  # subscribed to every event type of the checker's tenant
    cluster: Cluster  # the private PostgreSQL the gateway uses (postgres_restart restarts it)
    violations: dict[tuple[int, str, str], checks.Violation] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)  # every rule run, with its arguments
    steps: int = 0
    examples: int = 0
    quiet_after: list[float] = field(default_factory=list)  # seconds each quiescence took
    checked: str = "nothing"  # what the last checks covered
    remembered: checks.Remembered = field(default_factory=checks.Remembered)
    applications: list[faults.Application] = field(default_factory=list)
    hub: checks.Hub | None = None  # as last read for the checks (attributes attempts to payments)

    def record(self, found: list[checks.Violation]) -> None:
        """Keep each violation once; an aggregate seen again after more traffic keeps its latest figures."""
        for v in found:
            self.violations[(v.invariant, v.objects[0], re.sub(r"[0-9]+", "#", v.message))] = v

    async def books(self) -> checks.Books:
        """The simulators' books, with what a biller that lost its state had booked before."""
        return checks.Books.of(await self.sandbox.books(), self.remembered)


class Actions:
    """The model: what was made (notes, accounts, replayable answers) and the answers that were not
    as documented."""

    world: ClassVar[World]

    def __init__(self) -> None:
        super().__init__()
        self.notes: dict[str, Note] = {}
        self.account_ids: list[str] = []
        self.payment_ids: list[str] = []
        self.replayable: list[Operation] = []
        self.answers: list[checks.Violation] = []  # answers unlike the documented outcome
        self.step_violations: list[checks.Violation] = []
        self.crashes = 0
        self.faults: Counter[str] = Counter()  # fault applications of this example, by class
        self.rnd = random.Random(len(self.world.history.operations))
        self.prepaid_base = self.rnd.randrange(10_000_000, 90_000_000)

    # ---- plumbing ------------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.world.loop.run(coro)

    def call(self, label: str, verb: str, path: str, body: Any = None, *, keyed: bool = True) -> Operation:
        return self.run(self.world.client.call(label, verb, path, body, keyed=keyed))

    def expect(self, op: Operation, ok: bool, what: str) -> None:
        if not ok:
            objects = tuple(x for x in (op.field("id") or op.field("payment"), f"#{op.number}") if x)
            self.answers.append(checks.Violation(0, objects, f"expected {what}: {op.summary()}"))

    def customer(self) -> str:
        return f"cus_model_{self.rnd.randrange(20)}"

    def file(self, op: Operation, kind: str, amount: int, **extra: Any) -> list[str]:
        """Note the payment an answer created; keep keyed 200 answers for replays."""
        if op.key is not None and op.status == 200:
            self.replayable.append(op)
        pid = op.field("id")
        if op.status != 200 or not isinstance(pid, str) or not pid.startswith("pay_"):
            return []
        if pid not in self.notes:
            self.notes[pid] = Note(kind, amount, **extra)
            self.payment_ids.append(pid)
        return [pid]

    @staticmethod
    def outcome(op: Operation) -> tuple[int | None, str | None, str | None]:
        failure = op.field("failure")
        return op.status, op.field("status"), failure.get("code") if isinstance(failure, dict) else None

    def pay_wallet(self, pid: str) -> None:
        """The payer pays the wallet order(s) of a payment (the sandbox is told never to on its own)."""

        async def orders(conn: checks.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(
                "SELECT id FROM payment_attempts WHERE payment_id = $1 AND operation = 'authorize'", pid
            )
            return rows

        async def pay() -> None:
            for ref in await checks.retrying(orders, self.world.pool):
                await self.world.sandbox.pay_wallet(ref["id"])

        self.run(pay())

    def balance_of(self, account: str) -> tuple[int, int]:
        op = self.call("read account", "GET", f"/v1/accounts/{account}")
        balance = op.field("balance") or {}
        return int(balance.get("available", 0)), int(balance.get("pending", 0))

    def fetch_bill(self, biller: str, number: str) -> Operation:
        body = {"biller": biller, "customer_params": {"account_number": number}}
        return self.call("fetch bill", "POST", "/v1/bills/fetch", body, keyed=False)

    # ---- actions (rules and the tour call these) -----------------------------------------------

    def do_card(self, number: str, amount: int) -> list[str]:
        op = self.call(
            f"card {number[-4:]}", "POST", "/v1/payments", rq.card(number, amount, self.customer())
        )
        status, code = rq.CARDS[number]
        self.expect(op, self.outcome(op) == (200, status, code), f"200 {status} {code or ''}")
        return self.file(op, "card", amount)

    def do_challenged(self, amount: int, answer: str) -> list[str]:
        """A payment the risk rules challenge; the customer answers with the texted code (``right``),
        a wrong code then the right one, or only a wrong one (it then waits, then expires)."""
        body = rq.card(rq.APPROVED, amount)
        body["customer"] = {"id": CHALLENGED, "phone": PHONE}
        texted = len(self.run(self.world.sandbox.messages_to(PHONE)))
        op = self.call("challenged card", "POST", "/v1/payments", body)
        action = op.field("next_action")
        held = self.outcome(op)[:2] == (200, "requires_action") and isinstance(action, dict)
        self.expect(op, held and action.get("type") == "otp", "200 requires_action with an otp next_action")
        made = self.file(op, "card", amount)
        sent = self.run(self.world.sandbox.messages_to(PHONE))
        if not made or len(sent) <= texted:
            return made  # no code texted (the create was cut by a crash after its commit): it expires
        code = re.findall(r"\b[0-9]{6}\b", sent[-1]["body"])[0]
        confirm = f"/v1/payments/{made[0]}/confirm"
        if answer in ("wrong", "wrong_then_right"):
            wrong = self.call("wrong otp", "POST", confirm, {"otp": f"{(int(code) + 1) % 1_000_000:06d}"})
            error = wrong.field("error")
            refused = (
                wrong.status == 400
                and isinstance(error, dict)
                and error.get("code") == "authentication_failed"
            )
            self.expect(wrong, refused, "400 authentication_failed")
        if answer in ("right", "wrong_then_right"):
            right = self.call("right otp", "POST", confirm, {"otp": code})
            self.expect(right, self.outcome(right) == (200, "succeeded", None), "200 succeeded")
            if right.status == 200:
                self.replayable.append(right)
        return made

    def do_reviewed(self, amount: int, verdict: str, what: str = "card") -> list[str]:
        """A payment the risk rules hold for review (a card payment, a bank transfer or a bill paid by
        card); the operator approves or rejects it, the client cancels it, or it waits."""
        kind, body = "card", rq.card(rq.APPROVED, amount, REVIEWED)
        if what == "bank":
            kind, body = "bank", rq.payment(amount, rq.method("bank_transfer", "1111"))
        elif what == "bill":
            number = f"{self.rnd.randrange(100_000, 999_999)}{rq.POSTED}"
            bills = self.fetch_bill("bil_cn_power", number).field("data")
            if not bills:
                return []
            amount = int(bills[0]["amount_due"])
            bill = rq.utility_bill("bil_cn_power", number, bills[0]["bill_ref"])
            kind, body = "bill", rq.payment(amount, rq.method("card", rq.APPROVED), bill=bill)
        body["customer"] = {"id": REVIEWED}
        op = self.call(f"reviewed {what}", "POST", "/v1/payments", body)
        self.expect(op, self.outcome(op)[:2] == (200, "under_review"), "200 under_review")
        made = self.file(op, kind, amount)
        if not made or verdict == "wait":
            return made
        if verdict == "cancel":
            canceled = self.call("cancel reviewed", "POST", f"/v1/payments/{made[0]}/cancel", {})
            self.expect(canceled, self.outcome(canceled)[:2] == (200, "canceled"), "200 canceled")
            return made
        path = f"/v1/reviews/rev_{made[0].removeprefix('pay_')}/{verdict}"
        decided = self.run(self.world.ops.call(f"review {verdict}", "POST", path, {}, keyed=False))
        if verdict == "reject":
            self.expect(
                decided, self.outcome(decided) == (200, "failed", "risk_blocked"), "200 failed risk_blocked"
            )
        elif what == "bank":  # the bank settles it later, by callback
            self.expect(
                decided,
                self.outcome(decided)[:2] in ((200, "processing"), (200, "succeeded")),
                "200 processing",
            )
        else:
            self.expect(decided, self.outcome(decided) == (200, "succeeded", None), "200 succeeded")
        return made

    def do_manual(self, amount: int) -> list[str]:
        body = rq.card(rq.APPROVED, amount, self.customer(), capture="manual")
        op = self.call("manual card", "POST", "/v1/payments", body)
        self.expect(op, self.outcome(op)[:2] == (200, "requires_capture"), "200 requires_capture")
        return self.file(op, "manual", amount, state="held")

    def do_capture(self, payment: str, percent: int | None) -> list[str]:
        note = self.notes[payment]
        amount = None if percent is None else max(1, note.amount * percent // 100)
        body = {} if amount is None else {"amount_to_capture": amount}
        op = self.call("capture", "POST", f"/v1/payments/{payment}/capture", body)
        if note.state == "held":
            want = note.amount if amount is None else amount
            ok = self.outcome(op)[:2] == (200, "succeeded") and op.field("amount_captured") == want
            self.expect(op, ok, f"200 succeeded, captured {want}")
            note.state = "captured" if op.status == 200 else note.state
        else:
            self.expect(op, op.status == 409, f"409 (payment {note.state})")
        return [payment] if note.state == "captured" else []

    def do_cancel(self, payment: str) -> None:
        note = self.notes[payment]
        op = self.call("cancel", "POST", f"/v1/payments/{payment}/cancel", {})
        if note.state == "held":
            self.expect(op, self.outcome(op)[:2] == (200, "canceled"), "200 canceled")
            note.state = "canceled" if op.status == 200 else note.state
        else:
            self.expect(op, op.status == 409, f"409 (payment {note.state})")

    def do_cancel_wallet(self, payment: str, pay_first: bool) -> None:
        """Cancel a wallet payment (the hub closes the order), possibly just after its payer paid it:
        then the wallet refuses to close a paid order and the hub must not cancel (409)."""
        note = self.notes[payment]
        if pay_first:
            note.plan = "paid" if note.plan != "canceled" else note.plan
            self.pay_wallet(payment)
        op = self.call("cancel wallet", "POST", f"/v1/payments/{payment}/cancel", {})
        status, state, _ = self.outcome(op)
        if note.plan in ("never", "pay_later") and not pay_first:
            self.expect(op, (status, state) == (200, "canceled"), "200 canceled (the order was never paid)")
            note.plan = "canceled" if status == 200 else note.plan
        else:
            self.expect(op, status == 409 or (status, state) == (200, "canceled"), "200 canceled or 409")

    def do_bank(self, suffix: str, amount: int) -> list[str]:
        op = self.call(
            f"bank {suffix}", "POST", "/v1/payments", rq.payment(amount, rq.method("bank_transfer", suffix))
        )
        want = (200, "failed", "bank_rejected") if suffix == "0002" else (200, "processing", None)
        self.expect(op, self.outcome(op) == want, " ".join(map(str, want)))
        return self.file(op, "bank", amount)

    def do_wallet(self, provider: str, plan: str, amount: int) -> list[str]:
        op = self.call(
            f"wallet {provider}", "POST", "/v1/payments", rq.payment(amount, rq.method("wallet", provider))
        )
        self.expect(op, self.outcome(op)[:2] == (200, "requires_action"), "200 requires_action")
        filed = self.file(op, "wallet", amount, plan=plan)
        if filed and plan == "pay_now":
            self.pay_wallet(filed[0])
        return filed

    def do_prepaid(self, slot: int, amount: int) -> list[str]:
        pay = rq.method("prepaid", f"PP-{self.prepaid_base + slot}")
        op = self.call("prepaid", "POST", "/v1/payments", rq.payment(amount, pay))
        self.expect(op, self.outcome(op)[:2] in ((200, "succeeded"), (200, "failed")), "200 succeeded|failed")
        return self.file(op, "prepaid", amount)

    def do_open_account(self) -> list[str]:
        body = {"currency": "CNY", "customer": self.customer()}
        op = self.call("open account", "POST", "/v1/accounts", body, keyed=False)
        self.expect(op, op.status == 200, "200")
        account = op.field("id")
        if op.status != 200 or not isinstance(account, str):
            return []
        self.account_ids.append(account)
        return [account]

    def do_top_up(self, account: str, amount: int, by: str) -> list[str]:
        pay = (
            rq.method("card", rq.APPROVED)
            if by == "card"
            else rq.method("bank_transfer", "0005" if by == "bank_poll" else "1111")
        )
        op = self.call(f"top-up by {by}", "POST", f"/v1/accounts/{account}/topups", rq.payment(amount, pay))
        want = "succeeded" if by == "card" else "processing"
        self.expect(
            op, self.outcome(op)[:2] == (200, want) and op.field("destination") == account, f"200 {want}"
        )
        return self.file(op, "topup", amount)

    def do_balance(self, account: str, amount: int) -> list[str]:
        available, pending = self.balance_of(account)
        op = self.call("balance", "POST", "/v1/payments", rq.payment(amount, rq.method("balance", account)))
        if amount <= available:
            self.expect(
                op, self.outcome(op)[:2] == (200, "succeeded"), f"200 succeeded (available {available})"
            )
        elif amount > available + pending:
            want = (200, "failed", "insufficient_funds")
            self.expect(
                op, self.outcome(op) == want, f"200 failed insufficient_funds (available {available})"
            )
        return self.file(op, "balance", amount)

    def _bill_answer(self, op: Operation, by: str, *, late: bool, rejected: bool, funded: bool) -> None:
        status, state, code = self.outcome(op)
        posting = (op.field("bill_posting") or {}).get("status")
        if by == "bank":
            self.expect(op, (status, state) == (200, "processing"), "200 processing (collecting)")
        elif by == "wallet":
            self.expect(op, (status, state) == (200, "requires_action"), "200 requires_action")
        elif not funded:
            self.expect(
                op, (status, state, code) == (200, "failed", "insufficient_funds"), "insufficient_funds"
            )
        elif rejected:
            refunded = op.field("amount_refunded") == op.field("amount_captured") == op.field("amount")
            ok = (status, state, code) == (200, "failed", "biller_rejected") and refunded
            self.expect(op, ok, "200 failed biller_rejected, all refunded")
        elif late:
            ok = (status, state, posting) == (200, "processing", "pending")
            self.expect(op, ok, "200 processing, posting pending")
        else:
            self.expect(op, (status, state, posting) == (200, "succeeded", "posted"), "200 succeeded, posted")

    def do_bill(
        self, biller: str, number: str, by: str, account: str | None, plan: str = "pay_now"
    ) -> list[str]:
        fetched = self.fetch_bill(biller, number)
        if number.endswith(rq.NO_DUES):
            code = (fetched.field("error") or {}).get("code")
            self.expect(fetched, fetched.status == 404 and code == "bill_not_found", "404 bill_not_found")
            return []
        bills = fetched.field("data")
        self.expect(fetched, fetched.status == 200 and bool(bills), "200 with an open bill")
        pay = rq.bill_method(by, account)
        if fetched.status != 200 or not bills or pay is None:
            return []
        amount = int(bills[0]["amount_due"])
        funded = by != "balance" or account is None or self.balance_of(account)[0] >= amount
        body = rq.payment(amount, pay, bill=rq.utility_bill(biller, number, bills[0]["bill_ref"]))
        op = self.call(f"bill {biller} {number[-4:]} by {by}", "POST", "/v1/payments", body)
        late, rejected = number.endswith(rq.LATE), number.endswith(rq.REJECTED)
        self._bill_answer(op, by, late=late, rejected=rejected, funded=funded)
        filed = self.file(op, "bill", amount, plan=plan if by == "wallet" else "")
        if filed and by == "wallet" and plan == "pay_now":
            self.pay_wallet(filed[0])
        return filed

    def do_fx_bill(self, number: str, by: str, account: str | None, plan: str = "pay_now") -> list[str]:
        """A USD bill (bil_us_power) paid in CNY at a quoted rate; then the same quote once more, which
        must be refused (400 quote_used) and move nothing."""
        fetched = self.fetch_bill(rq.FX_BILLER, number)
        if number.endswith(rq.NO_DUES):
            return []
        bills = fetched.field("data")
        self.expect(fetched, fetched.status == 200 and bool(bills), "200 with an open bill")
        pay = rq.bill_method(by, account)
        if fetched.status != 200 or not bills or pay is None:
            return []
        due = int(bills[0]["amount_due"])
        quoted = self.call("fx quote", "POST", "/v1/fx/quotes", rq.fx_quote(due), keyed=False)
        quote = quoted.json if quoted.status == 200 else None
        self.expect(quoted, quote is not None and quote["to_amount"] == due, f"200 quote for {due} USD")
        if quote is None:
            return []
        amount = int(quote["from_amount"])
        funded = by != "balance" or account is None or self.balance_of(account)[0] >= amount
        bill = rq.utility_bill(rq.FX_BILLER, number, bills[0]["bill_ref"])
        body = rq.payment(amount, pay, bill=bill, fx_quote=quote["id"])
        op = self.call(f"fx bill {number[-4:]} by {by}", "POST", "/v1/payments", body)
        late, rejected = number.endswith(rq.LATE), number.endswith(rq.REJECTED)
        self._bill_answer(op, by, late=late, rejected=rejected, funded=funded)
        self.expect(
            op, op.status != 200 or (op.field("fx") or {}).get("quote") == quote["id"], "fx.quote shown"
        )
        if op.status == 200:
            again = self.call("fx quote reused", "POST", "/v1/payments", body)
            code = (again.field("error") or {}).get("code")
            self.expect(again, (again.status, code) == (400, "quote_used"), "400 quote_used")
        return self.file(op, "bill", amount, plan=plan if by == "wallet" else "")

    def do_phone(self, msisdn: str, amount: int, by: str, account: str | None) -> list[str]:
        pay = rq.bill_method(by, account)
        if pay is None:
            return []
        funded = by != "balance" or (account is not None and self.balance_of(account)[0] >= amount)
        body = rq.payment(amount, pay, bill=rq.phone(msisdn))
        op = self.call(f"phone {msisdn[-4:]} by {by}", "POST", "/v1/payments", body)
        if msisdn.endswith("7777") and by in ("card", "balance") and funded:
            status, state, _ = self.outcome(op)
            self.expect(
                op, status == 200 and state in ("processing", "succeeded"), "200 processing|succeeded"
            )
        else:
            self._bill_answer(op, by, late=False, rejected=False, funded=funded)
        return self.file(op, "phone", amount, plan="pay_later" if by == "wallet" else "")

    def do_refund(self, payment: str, amount: int | None) -> None:
        body: dict[str, Any] = {"payment": payment} | ({} if amount is None else {"amount": amount})
        op = self.call("refund", "POST", "/v1/refunds", body)
        self.expect(op, op.status in (200, 400, 409), "200, 400 or 409")
        if self.notes[payment].kind in ("bill", "phone"):
            code = (op.field("error") or {}).get("code")
            self.expect(
                op,
                (op.status, code) == (409, "bill_payment_not_refundable"),
                "409 bill_payment_not_refundable",
            )
        if op.status == 200:
            self.replayable.append(op)

    def do_concurrent_refunds(self, payment: str, count: int, amount: int) -> None:
        client = self.world.client
        body = {"payment": payment, "amount": amount}
        ops = [
            client.operation(f"concurrent refund {i + 1}/{count}", "POST", "/v1/refunds", body)
            for i in range(count)
        ]

        async def fire() -> None:
            await asyncio.gather(*(client.settle(op) for op in ops))

        self.run(fire())
        for op in ops:
            self.expect(op, op.status in (200, 400, 409), "200, 400 or 409")
            if op.status == 200:
                self.replayable.append(op)

    def do_replay(self, pick: int, concurrently: bool) -> None:
        """The same key and body again: the stored first answer, byte for byte, marked replayed."""
        if not self.replayable:
            return
        original = self.replayable[pick % len(self.replayable)]
        first = original.answer
        assert first is not None
        client = self.world.client
        label = f"replay of #{original.number}"
        copies = [
            client.history.new(label, original.method, original.path, original.body, original.key)
            for _ in range(2 if concurrently else 1)
        ]

        async def fire() -> None:
            await asyncio.gather(*(client.settle(copy) for copy in copies))

        self.run(fire())
        for copy in copies:
            answer = copy.answer
            same = answer is not None and (answer.status, answer.raw) == (first.status, first.raw)
            self.expect(
                copy,
                same and answer is not None and answer.replayed,
                f"#{original.number}'s answer again, byte for byte, replayed",
            )

    # ---- checks --------------------------------------------------------------------------------

    def check_all(self) -> list[checks.Violation]:
        """Quiescence, then every invariant against the hub and the books (merged across a biller's
        lost state), with the answers and faults the model saw go wrong; recorded in the world."""
        world = self.world
        world.quiet_after.append(
            self.run(checks.quiesce(world.pool, world.profile.quiesce, world.sandbox.books))
        )
        hub = self.run(checks.read_hub(world.pool))
        books = self.run(world.books())
        books.webhooks = world.receiver.receipts()
        found = checks.check(hub, books, world.history) + self.step_violations + self.answers
        found += [checks.Violation(0, ("gateway",), exit_) for exit_ in world.stack.unexpected_exits]
        world.stack.unexpected_exits.clear()
        world.checked = checks.coverage(hub, books)
        world.hub = hub
        world.record(found)
        return found

    # ---- faults --------------------------------------------------------------------------------

    def random_fault(self, kind: str) -> list[str]:
        """One application of ``kind`` with a drawn burst (the teardown's top-ups)."""
        kinds = [self.rnd.choice(IN_FLIGHT) for _ in range(self.rnd.randrange(2, 5))]
        kinds.append(self.rnd.choice(SLOW_IN_FLIGHT))
        payment = self.rnd.choice(self.payment_ids) if self.payment_ids else None
        if kind == "gateway_kill":
            return self.crash_with(
                kinds, self.rnd.randrange(0, 300), payment, self.rnd.choice([0.0, 0.1, 0.25])
            )
        burst = self.rnd.randrange(100, 1500)
        return self.apply_fault(
            kind,
            kinds,
            payment,
            burst_ms=burst,
            lead_ms=self.rnd.randrange(0, burst),
            hold=self.rnd.choice(HOLDS),
            pick=self.rnd.randrange(12),
        )

    # ---- crashes -------------------------------------------------------------------------------

    def in_flight(self, kind: str, payment: str | None) -> tuple[Operation, str, int] | None:
        """A request to have in flight when the gateway is killed: (operation, kind to note, amount)."""
        amount = self.rnd.randrange(100, 20_000)
        account = self.rnd.choice(self.account_ids) if self.account_ids else None
        path, noted = "/v1/payments", kind.partition("_")[0]
        body: dict[str, Any] | None = None
        if kind in ("card", "slow_card", "timeout_card"):
            number = {"card": rq.APPROVED, "slow_card": rq.SLOW, "timeout_card": rq.TIMEOUT}[kind]
            body, noted = rq.card(number, amount, self.customer()), "card"
        elif kind == "refund_async":  # a bank or wallet payment's refund: slowed by ``latency``
            asynchronous = [p for p, n in self.notes.items() if n.kind in ("bank", "wallet", "topup")]
            target = self.rnd.choice(asynchronous) if asynchronous else payment
            if target is not None:
                path, noted = "/v1/refunds", ""
                body = {"payment": target, "amount": max(1, self.notes[target].amount // 4)}
        elif kind == "refund" and payment is not None:
            path, noted = "/v1/refunds", ""
            body = {"payment": payment, "amount": max(1, self.notes[payment].amount // 4)}
        elif kind in ("bank", "wallet", "prepaid"):
            pay = {
                "bank": rq.method("bank_transfer", "4321"),
                "wallet": rq.method("wallet", "wechat_pay"),
                "prepaid": rq.method("prepaid", f"PP-{self.prepaid_base + 7}"),
            }[kind]
            body = rq.payment(amount, pay)
        elif kind in ("topup_card", "topup_bank") and account:
            path = f"/v1/accounts/{account}/topups"
            body = rq.payment(amount, rq.bill_method("card" if kind == "topup_card" else "bank", None) or {})
        elif kind == "balance" and account:
            amount //= 2
            body = rq.payment(amount, rq.method("balance", account))
        elif kind in ("bill_card", "bill_bank", "bill_late"):
            ending = rq.LATE if kind == "bill_late" else self.rnd.choice([rq.POSTED, rq.REJECTED, rq.LATE])
            number = f"{self.rnd.randrange(100_000, 999_999)}{ending}"
            fetched = self.fetch_bill("bil_cn_power", number)
            bills = fetched.field("data")
            if fetched.status != 200 or not bills:
                return None
            amount = int(bills[0]["amount_due"])
            pay = rq.bill_method("bank" if kind == "bill_bank" else "card", None) or {}
            body = rq.payment(amount, pay, bill=rq.utility_bill("bil_cn_power", number, bills[0]["bill_ref"]))
        elif kind == "phone_card":
            amount = 3000
            body = rq.payment(
                amount, rq.method("card", rq.APPROVED), bill=rq.phone(self.rnd.choice(rq.MSISDNS))
            )
        if body is None:
            return None
        return self.world.client.operation(f"{kind} (in flight)", "POST", path, body), noted, amount

    def crash_with(
        self, kinds: list[str], delay_ms: int, payment: str | None, latency: float = 0.0
    ) -> list[str]:
        """Fire the requests (each at a random moment before the kill), wait ``delay_ms``, kill -9 the
        gateway, start it again, and retry every unanswered request with its same key and body until it
        gets an answer. ``latency`` slows the HTTP simulators meanwhile, so that the kill is more likely
        to land while the gateway waits for a processor or a biller."""
        filed = self.apply_fault(
            "gateway_kill", kinds, payment, burst_ms=delay_ms, lead_ms=delay_ms, hold=0.0, latency=latency
        )
        self.crashes += 1
        return filed

    def apply_fault(
        self,
        kind: str,
        kinds: list[str],
        payment: str | None,
        *,
        burst_ms: int,
        lead_ms: int,
        hold: float,
        pick: int = 0,
        latency: float = 0.0,
    ) -> list[str]:
        """A burst of requests fired at random moments over ``burst_ms``; the fault starts ``lead_ms``
        into it, holds ``hold`` s and ends; every unanswered request is then retried with its same key
        and body until answered, and the recovery is measured (:mod:`tests.model.faults`). During a
        gateway kill each request gets one try until the restart (a retry would restart the gateway
        itself); otherwise the client retries throughout, as a client app would."""
        world = self.world
        planned = [p for p in (self.in_flight(kind_, payment) for kind_ in kinds) if p is not None]
        app = faults.Application(kind, "", [op for op, _, _ in planned])
        world.applications.append(app)
        injector = faults.injector(world, kind, hold, pick, app, latency)
        app.detail = injector.detail
        try_once = kind == "gateway_kill"

        async def fire(op: Operation) -> None:
            await asyncio.sleep(self.rnd.uniform(0, burst_ms) / 1000)
            await (world.client.send(op) if try_once else world.client.settle(op))

        async def go() -> None:
            if injector.prepare is not None:
                await injector.prepare()
            tasks = [asyncio.ensure_future(fire(op)) for op in app.operations]
            await asyncio.sleep(lead_ms / 1000)
            app.started = time.time()
            await injector.begin()
            await asyncio.sleep(hold)
            await injector.end()
            app.ended, ended = time.time(), time.monotonic()
            await asyncio.gather(*tasks)
            for op in app.operations:
                op.notes.append(
                    f"in flight at {kind}: {app.detail} ({lead_ms} ms into a {burst_ms} ms burst)"
                )
            await asyncio.gather(*(world.client.settle(op) for op in app.operations))
            await faults.recover(world.pool, app, ended)
            # The first call after a fault that opened a connector's circuit must find it half-open.
            await asyncio.sleep(max(0.0, BREAKER_RESET + 0.5 - (time.monotonic() - ended)))

        self.run(go())
        self.faults[kind] += 1
        number = len(world.applications) - 1
        self.answers += [
            checks.Violation(0, (f"fault:{kind}:{number}",), f"{kind} ({app.detail}): {failure}")
            for failure in app.failures
        ]
        filed: list[str] = []
        for op, noted, amount in planned:
            if noted:
                filed += self.file(op, noted, amount)
            elif op.status == 200:
                self.replayable.append(op)
        return filed


# ---- the world ---------------------------------------------------------------------------------


async def _pool(db_url: str) -> asyncpg.Pool:
    # No floor: asyncpg would keep reconnecting it (and logging) while PostgreSQL restarts.
    return await asyncpg.create_pool(db_url, min_size=0, max_size=4)


async def _migrated(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


@contextmanager
def open_world(home: Path, workdir: Path, profile: Profile) -> Iterator[World]:
    """The processes on a private PostgreSQL cluster (restartable: postgres_restart), the clients, the
    webhook receiver; everything stopped and removed on exit."""
    loop = Loop()
    try:
        previous: asyncio.AbstractEventLoop | None = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:  # pytest-asyncio leaves none set after its tests in this thread
        previous = None
    asyncio.set_event_loop(loop.loop)  # asyncpg binds its pool to the current loop
    root = Path(tempfile.mkdtemp(prefix="payhub-model-pg-"))  # not tmp_path: PostgreSQL's user must reach it
    cluster = Cluster.create(root)
    receiver = model_receiver()
    stack: Stack | None = None
    clients: list[Client] = []
    sandbox: Sandbox | None = None
    try:
        db_url = cluster.create_database("payhub")
        loop.run(_migrated(db_url))
        stack = Stack(home, db_url, workdir)
        history = History()
        client = Client(stack, PkiPaths(home / "pki"), history)
        ops = Client(stack, PkiPaths(home / "pki"), history, tenant="ops")
        clients = [client, ops]
        sandbox = Sandbox(stack)
        loop.run(stack.start())
        loop.run(sandbox.wallet_never_pays_by_itself())
        endpoint = loop.run(
            client.call(
                "webhook endpoint",
                "POST",
                "/v1/webhook_endpoints",
                {"url": receiver.url, "enabled_events": ["*"]},
                keyed=False,
            )
        )
        assert endpoint.status == 200, endpoint.summary()
        receiver.secret = endpoint.field("secret")
        pool: asyncpg.Pool = loop.run(_pool(db_url))
        try:
            yield World(loop, stack, client, ops, sandbox, pool, history, profile, workdir, receiver, cluster)
        finally:
            loop.run(pool.close())
    finally:
        receiver.stop()
        for each in clients:
            loop.run(each.close())
        if sandbox is not None:
            loop.run(sandbox.close())
        if stack is not None:
            stack.stop()
        loop.close()
        asyncio.set_event_loop(previous)
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
