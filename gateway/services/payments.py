"""Payments: create (every method), capture, cancel, refund, and settling unknown outcomes.

Each money-moving request runs in three phases around the connector call (Brandur Leach's
atomic phases): (1) one transaction records the payment and the attempt and sets the recovery
point; (2) the connector is called *outside* any transaction, with the attempt id as its
idempotency reference; (3) one transaction applies the answer: payment and attempt, ledger,
event, audit and the stored idempotent response. A crash between phases leaves a recovery point
a retry resumes from, with the same attempt id, so the connector never charges twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import msgspec
import orjson

from connectors.base import (
    CardData,
    ConnectorError,
    ConnectorResult,
    ConnectorUnavailable,
    PaymentConnector,
    PaymentRequest,
)
from connectors.base import Outcome as ConnectorOutcome
from gateway import errors
from gateway.domain.money import MoneyError, check_amount, normalize_currency
from gateway.domain.payment_state import CANCELABLE, CAPTURABLE, Status
from gateway.identity import Identity
from gateway.ids import new_id
from gateway.logs import audit as log_audit
from gateway.logs import mask_pans
from gateway.metrics import Metrics
from gateway.services.bills import BillPoster
from gateway.services.idempotent import KeyedRequest, Outcome, run_idempotent
from gateway.services.outcomes import Decision, after_authorize, after_capture, after_error, after_void
from gateway.store import idempotency, ledger
from gateway.store import payments as store
from gateway.store.idempotency import Claimed
from gateway.store.keyring import KeyringCache
from gateway.store.outcomes import OutcomeRecord, record_outcome
from gateway.store.types import Connection
from gateway.store.vault import get_card, reveal_pan, vault_card
from gateway.views import render, schemas

RECOVERY_ATTEMPT_CREATED = "attempt_created"
# Seconds between status inquiries for an attempt, by how many were made (then every 3 minutes).
RESOLVE_BACKOFF = (1.0, 5.0, 15.0, 30.0, 60.0, 180.0)


@dataclass(frozen=True, slots=True)
class PreparedMethod:
    """What the connector needs (in memory only) and what may be stored and shown."""

    display: dict[str, Any]
    card: CardData | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


def money(amount: int, currency: str) -> tuple[int, str]:
    try:
        return check_amount(amount), normalize_currency(currency)
    except MoneyError as exc:
        raise errors.InvalidRequest(str(exc), param=exc.param) from exc


async def record_and_log(conn: Connection, record: OutcomeRecord) -> None:
    """Event + audit row + stored response in one round trip, then the audit line on stdout."""
    seq = await record_outcome(conn, record)
    log_audit(
        record.action,
        actor=record.actor,
        outcome=record.outcome,
        source=record.source,
        object_id=record.object_id,
        tenant=record.tenant,
        audit_seq=seq,
        **record.details,
    )


def refuse_card_numbers(fields: Mapping[str, str | None]) -> None:
    """Free-text fields are stored, shown and sent in webhooks in clear: a card number there would
    leak the PAN past the vault, so such a request is refused (400) before anything is stored."""
    for param, value in fields.items():
        if value and mask_pans(value) != value:
            raise errors.InvalidRequest(
                f"{param} looks like it contains a card number; card data goes in payment_method.card only.",
                param=param,
            )


def free_text(params: schemas.CreatePaymentRequest) -> dict[str, str | None]:
    customer = params.customer
    fields: dict[str, str | None] = {"description": params.description}
    if customer is not None:
        fields |= {
            "customer.id": customer.id,
            "customer.email": customer.email,
            "customer.device_id": customer.device_id,
        }
    card = params.payment_method.card
    if card is not None:
        fields["payment_method.card.holder_name"] = card.holder_name
    for key, value in params.metadata.items():
        fields[f"metadata.{key}"] = f"{key} {value}"
    return fields


def _method_block(method: schemas.PaymentMethodInput) -> Any:
    block = getattr(method, method.type)
    if block is None:
        raise errors.InvalidRequest(
            f"payment_method.{method.type} is required when payment_method.type is '{method.type}'.",
            code="parameter_missing",
            param=f"payment_method.{method.type}",
        )
    return block


class PaymentService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        keyring: KeyringCache,
        connectors: Mapping[str, PaymentConnector],
        routing: Mapping[str, Sequence[str]],  # method → connectors in fallback order
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self.bills: BillPoster | None = None  # set when biller connectors are configured
        self.refunds: RefundResolver | None = None  # settles refunds whose outcome was unknown
        self._pool = pool
        self._keyring = keyring
        self._connectors = connectors
        self._routing = routing

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    # ---- create ----------------------------------------------------------------------------

    async def create(
        self,
        identity: Identity,
        params: schemas.CreatePaymentRequest,
        keyed: KeyedRequest,
        source: str | None,
    ) -> Outcome:
        amount, currency = money(params.amount, params.currency)
        _method_block(params.payment_method)  # refuse a missing method block before claiming the key
        refuse_card_numbers(free_text(params))
        if params.bill is not None:
            params = await self._check_bill(identity, params, amount, currency)

        async def work(claim: Claimed) -> Outcome:
            return await self._create(
                identity, params, amount=amount, currency=currency, claim=claim, keyed=keyed, source=source
            )

        return await run_idempotent(self._pool, keyed, work)

    async def _check_bill(
        self, identity: Identity, params: schemas.CreatePaymentRequest, amount: int, currency: str
    ) -> schemas.CreatePaymentRequest:
        """Every biller check before money is collected; returns params with normalised customer_params."""
        bill = params.bill
        assert bill is not None
        if self.bills is None:
            raise errors.InvalidRequest("No biller connectors are configured.", param="bill.biller")
        if params.capture_method != "automatic":
            raise errors.InvalidRequest(
                "A bill payment is captured automatically: the biller is paid with collected money.",
                param="capture_method",
            )
        checked = await self.bills.directory.validate_payment(
            bill.biller, bill.customer_params, amount, currency, bill.bill_ref, tenant=identity.tenant
        )
        normalised = msgspec.structs.replace(bill, customer_params=dict(checked.customer_params))
        return msgspec.structs.replace(params, bill=normalised)

    async def topup(
        self,
        identity: Identity,
        account_id: str,
        params: schemas.CreateTopupRequest,
        keyed: KeyedRequest,
        source: str | None,
    ) -> Outcome:
        """Fund a stored balance from a card or a bank transfer: a payment whose funds go to the account."""
        amount, currency = money(params.amount, params.currency)
        if params.payment_method.type not in ("card", "bank_transfer"):
            raise errors.InvalidRequest(
                "A top-up is funded by a card or a bank transfer.", param="payment_method.type"
            )
        _method_block(params.payment_method)
        refuse_card_numbers({"description": params.description})
        async with self._pool.acquire() as conn:
            account = await ledger.get_customer_account(conn, tenant=identity.tenant, account_id=account_id)
        if account is None:
            raise errors.NotFound(f"No such account: '{account_id}'.", param="id")
        if account.currency != currency:
            raise errors.InvalidRequest(
                f"The account holds {account.currency}; the top-up is in {currency}.", param="currency"
            )
        payment = schemas.CreatePaymentRequest(
            amount=amount,
            currency=currency,
            payment_method=params.payment_method,
            customer=schemas.CustomerInput(id=account.customer_id) if account.customer_id else None,
            description=params.description,
        )

        async def work(claim: Claimed) -> Outcome:
            return await self._create(
                identity,
                payment,
                amount=amount,
                currency=currency,
                claim=claim,
                keyed=keyed,
                source=source,
                destination=account_id,
            )

        return await run_idempotent(self._pool, keyed, work)

    async def _create(
        self,
        identity: Identity,
        params: schemas.CreatePaymentRequest,
        *,
        amount: int,
        currency: str,
        claim: Claimed,
        keyed: KeyedRequest,
        source: str | None,
        destination: str | None = None,
    ) -> Outcome:
        tenant = identity.tenant
        method = params.payment_method
        if method.type == "balance":
            return await self._create_balance_payment(
                identity, params, amount=amount, currency=currency, keyed=keyed, source=source
            )
        candidates = [
            self._connectors[name] for name in self._routing.get(method.type, ()) if name in self._connectors
        ]
        if not candidates:
            raise errors.InvalidRequest(
                f"No connector is configured for {method.type} payments.", param="payment_method.type"
            )
        connector = candidates[0]
        prepared = await self._prepare(tenant, method)
        async with self._pool.acquire() as conn:
            if claim.recovery_point == RECOVERY_ATTEMPT_CREATED and claim.object_id:
                payment_id = claim.object_id
                attempt = await store.latest_attempt(conn, payment_id=payment_id, operation="authorize")
                assert attempt is not None  # written in the same statement as the recovery point
                attempt_id = attempt["id"]
                # Resume with the connector that attempt went to (a fallback may have switched it).
                connector = self._connectors[attempt["connector"]]
                candidates = (
                    candidates[candidates.index(connector) :] if connector in candidates else [connector]
                )
            else:
                payment_id, attempt_id = new_id("pay"), new_id("att")
                customer = params.customer
                await store.start_payment(
                    conn,
                    store.NewPayment(
                        id=payment_id,
                        tenant=tenant,
                        amount=amount,
                        currency=currency,
                        method=method.type,
                        payment_method=orjson.dumps(prepared.display).decode(),
                        capture_method=params.capture_method,
                        customer_id=customer.id if customer else None,
                        customer=_customer_json(customer),
                        description=params.description,
                        metadata=orjson.dumps(params.metadata).decode(),
                        connector=connector.name,
                        destination_account=destination,
                        biller=params.bill.biller if params.bill else None,
                        bill=_bill_json(params.bill),
                    ),
                    attempt_id=attempt_id,
                    idempotency_key=keyed.key,
                    recovery_point=RECOVERY_ATTEMPT_CREATED,
                )
        capture = params.capture_method == "automatic"
        request = PaymentRequest(
            attempt_id=attempt_id,
            payment_id=payment_id,
            tenant=tenant,
            amount=amount,
            currency=currency,
            method=method.type,
            capture=capture,
            card=prepared.card,
            details=prepared.details,
            customer=_customer_dict(params.customer),
            description=params.description,
        )
        for position, connector in enumerate(candidates):
            try:
                result = await connector.authorize(request)
            except ConnectorUnavailable as exc:
                if position + 1 == len(candidates):
                    decision = after_error(exc)
                    break
                # Nothing reached this connector, so no money can have moved: fall back to the next
                # one under a fresh attempt id (the failed attempt stays on record).
                request = dataclasses.replace(request, attempt_id=new_id("att"))
                async with self._pool.acquire() as conn:
                    await store.fall_back(
                        conn,
                        tenant=tenant,
                        payment_id=payment_id,
                        failed_attempt=attempt_id,
                        attempt_id=request.attempt_id,
                        connector=candidates[position + 1].name,
                        amount=amount,
                    )
                attempt_id = request.attempt_id
            except ConnectorError as exc:
                decision = after_error(exc)
                break
            else:
                decision = after_authorize(result, amount=amount, capture=capture)
                break
        decision, post_bill = _hold_for_bill(decision, has_bill=params.bill is not None)
        outcome = await self._apply(
            tenant,
            payment_id,
            attempt_id,
            decision,
            connector=connector.name,
            currency=currency,
            keyed=None if post_bill else keyed,  # the response is the one after posting
            actor=identity,
            source=source,
            action="payment.create",
        )
        if post_bill and self.bills is not None:
            return await self.bills.post(tenant, payment_id, keyed=keyed, actor=identity, source=source)
        return outcome

    async def _prepare(self, tenant: str, method: schemas.PaymentMethodInput) -> PreparedMethod:
        block = _method_block(method)
        if isinstance(block, schemas.CardInput):
            return await self._prepare_card(tenant, block)
        if isinstance(block, schemas.BankTransferInput):
            display = {"type": "bank_transfer", "bank_transfer": {"last4": block.account_number[-4:]}}
            return PreparedMethod(display, details={"account_number": block.account_number})
        if isinstance(block, schemas.WalletInput):
            return PreparedMethod(
                {"type": "wallet", "wallet": {"provider": block.provider}},
                details={"provider": block.provider},
            )
        if isinstance(block, schemas.PrepaidInput):
            return PreparedMethod(
                {"type": "prepaid", "prepaid": {"last4": block.code[-4:]}}, details={"code": block.code}
            )
        raise errors.InvalidRequest("Unsupported payment method.", param="payment_method.type")

    async def _prepare_card(self, tenant: str, card: schemas.CardInput) -> PreparedMethod:
        async with self._pool.acquire() as conn:
            if card.token is not None:
                if card.number is not None:
                    raise errors.InvalidRequest(
                        "Send either card.token or card.number, not both.", param="payment_method.card.token"
                    )
                stored = await get_card(conn, tenant=tenant, token_id=card.token)
                pan = (
                    await reveal_pan(conn, self._keyring, tenant=tenant, token_id=card.token)
                    if stored
                    else None
                )
                if stored is None or pan is None:
                    raise errors.NotFound(
                        f"No such token: '{card.token}'.", param="payment_method.card.token"
                    )
            else:
                if card.number is None or card.exp_month is None or card.exp_year is None:
                    missing = next(f for f in ("number", "exp_month", "exp_year") if getattr(card, f) is None)
                    raise errors.InvalidRequest(
                        f"payment_method.card.{missing} is required.",
                        code="parameter_missing",
                        param=f"payment_method.card.{missing}",
                    )
                keyring = await self._keyring.current(conn)
                try:
                    stored = await vault_card(
                        conn,
                        keyring,
                        tenant=tenant,
                        pan=card.number,
                        exp_month=card.exp_month,
                        exp_year=card.exp_year,
                    )
                except ValueError as exc:
                    raise errors.InvalidRequest(
                        str(exc), code="invalid_card", param="payment_method.card"
                    ) from exc
                pan = "".join(ch for ch in card.number if ch.isdigit())
        d = stored.display
        display = {
            "type": "card",
            "card": {
                "brand": d.brand,
                "bin": d.bin,
                "last4": d.last4,
                "exp_month": d.exp_month,
                "exp_year": d.exp_year,
                "token": stored.token_id,
            },
        }
        data = CardData(pan, d.exp_month, d.exp_year, card.cvc, card.holder_name)
        return PreparedMethod(display, card=data)

    async def _create_balance_payment(
        self,
        identity: Identity,
        params: schemas.CreatePaymentRequest,
        *,
        amount: int,
        currency: str,
        keyed: KeyedRequest,
        source: str | None,
    ) -> Outcome:
        """A stored-balance payment is a ledger move: no connector, one transaction."""
        tenant = identity.tenant
        account_id = _method_block(params.payment_method).account
        payment_id = new_id("pay")
        async with self._pool.acquire() as conn, conn.transaction():
            account = await ledger.get_customer_account(conn, tenant=tenant, account_id=account_id)
            if account is None:
                raise errors.NotFound(
                    f"No such account: '{account_id}'.", param="payment_method.balance.account"
                )
            if account.currency != currency:
                raise errors.InvalidRequest(
                    f"The account holds {account.currency}; the payment is in {currency}.", param="currency"
                )
            customer = params.customer
            await store.insert_payment(
                conn,
                store.NewPayment(
                    id=payment_id,
                    tenant=tenant,
                    amount=amount,
                    currency=currency,
                    method="balance",
                    payment_method=orjson.dumps(
                        {"type": "balance", "balance": {"account": account_id}}
                    ).decode(),
                    capture_method="automatic",
                    customer_id=customer.id if customer else account.customer_id,
                    customer=_customer_json(customer),
                    description=params.description,
                    metadata=orjson.dumps(params.metadata).decode(),
                    connector=None,
                    biller=params.bill.biller if params.bill else None,
                    bill=_bill_json(params.bill),
                ),
            )
            # Money for a bill is owed to the biller until posted; otherwise it is the tenant's.
            clearing = (
                ledger.SystemAccount(tenant, "biller_payable", params.bill.biller, currency)
                if params.bill
                else ledger.SystemAccount(tenant, "tenant_clearing", "default", currency)
            )
            try:
                async with conn.transaction():  # savepoint: an overdraft fails the payment, not the request
                    await ledger.post(
                        conn,
                        tenant=tenant,
                        kind="payment",
                        moves=[ledger.Move(account_id, clearing, amount, currency)],
                        payment_id=payment_id,
                    )
            except ledger.InsufficientFunds:
                decision = Decision(
                    store.PaymentUpdate(
                        Status.FAILED, failure_code="insufficient_funds", failure_message="Balance too low."
                    ),
                    "failed",
                    "payment.failed",
                    0,
                )
            else:
                decision = Decision(
                    store.PaymentUpdate(Status.SUCCEEDED, amount, amount),
                    "succeeded",
                    "payment.succeeded",
                    amount,
                )
            # The ledger move above is the capture; `captured` only tells _hold_for_bill money was taken.
            decision, post_bill = _hold_for_bill(decision, has_bill=params.bill is not None)
            outcome = await self.apply_in(
                conn,
                tenant,
                payment_id,
                None,
                decision,
                connector=None,
                currency=currency,
                keyed=None if post_bill else keyed,
                actor=identity,
                source=source,
                action="payment.create",
            )
        if post_bill and self.bills is not None:
            return await self.bills.post(tenant, payment_id, keyed=keyed, actor=identity, source=source)
        return outcome

    # ---- capture / cancel ------------------------------------------------------------------

    async def capture(
        self, identity: Identity, payment_id: str, amount: int | None, keyed: KeyedRequest, source: str | None
    ) -> Outcome:
        async def work(claim: Claimed) -> Outcome:
            tenant = identity.tenant
            async with self._pool.acquire() as conn, conn.transaction():
                row = await store.claim_status(
                    conn,
                    tenant=tenant,
                    payment_id=payment_id,
                    allowed=sorted(CAPTURABLE),
                    target="processing",
                )
                if row is None:
                    raise await self._why_not(conn, tenant, payment_id, "capture")
                to_capture = row["amount_authorized"] if amount is None else amount
                if not 0 < to_capture <= row["amount_authorized"]:
                    raise errors.InvalidRequest(
                        f"amount_to_capture must be between 1 and {row['amount_authorized']}.",
                        param="amount_to_capture",
                    )
                attempt_id = new_id("att")
                await store.insert_attempt(
                    conn,
                    attempt_id=attempt_id,
                    payment_id=payment_id,
                    tenant=tenant,
                    operation="capture",
                    connector=row["connector"],
                    amount=to_capture,
                )
                await idempotency.set_recovery_point(
                    conn, tenant=tenant, key=keyed.key, point=RECOVERY_ATTEMPT_CREATED, object_id=payment_id
                )
            connector = self._connectors[row["connector"]]
            try:
                result = await connector.capture(
                    attempt_id=attempt_id,
                    reference=row["connector_reference"],
                    amount=to_capture,
                    currency=row["currency"],
                )
            except ConnectorError as exc:
                decision = after_error(exc)
                if exc.outcome_known:  # nothing captured: the authorization still stands
                    decision = Decision(
                        store.PaymentUpdate(Status.REQUIRES_CAPTURE), "failed", "payment.capture_failed", 0
                    )
            else:
                decision = after_capture(result, amount=to_capture)
            return await self._apply(
                tenant,
                payment_id,
                attempt_id,
                decision,
                connector=row["connector"],
                currency=row["currency"],
                keyed=keyed,
                actor=identity,
                source=source,
                action="payment.capture",
            )

        return await run_idempotent(self._pool, keyed, work)

    async def cancel(
        self, identity: Identity, payment_id: str, keyed: KeyedRequest, source: str | None
    ) -> Outcome:
        async def work(claim: Claimed) -> Outcome:
            tenant = identity.tenant
            async with self._pool.acquire() as conn:
                row = await store.claim_status(
                    conn,
                    tenant=tenant,
                    payment_id=payment_id,
                    allowed=sorted(CANCELABLE),
                    target="processing",
                )
                if row is None:
                    raise await self._why_not(conn, tenant, payment_id, "cancel")
            attempt_id = None
            if row["connector"] is not None and row["connector_reference"] is not None:
                # Release the authorization (or close the wallet order) at the connector first.
                attempt_id = new_id("att")
                async with self._pool.acquire() as conn:
                    await store.insert_attempt(
                        conn,
                        attempt_id=attempt_id,
                        payment_id=payment_id,
                        tenant=tenant,
                        operation="void",
                        connector=row["connector"],
                        amount=0,
                    )
                try:
                    result: ConnectorResult | None = await self._connectors[row["connector"]].void(
                        attempt_id=attempt_id, reference=row["connector_reference"]
                    )
                    known = result is not None and result.outcome is not ConnectorOutcome.PENDING
                    refusal: ConnectorError | None = None
                except ConnectorError as exc:
                    result, known = None, exc.outcome_known
                    refusal = None if exc.retriable else exc  # e.g. the wallet order was paid meanwhile
                if not known:
                    # Sent, no definite answer: stay processing; the resolver asks until it knows.
                    async with self._pool.acquire() as conn, conn.transaction():
                        await store.mark_unknown(conn, attempt_id=attempt_id)
                        current = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
                        body = render.encode(render.payment(current))
                        await idempotency.finish(conn, tenant=tenant, key=keyed.key, status=200, body=body)
                    return Outcome(200, body)
                if result is None or result.outcome is not ConnectorOutcome.SUCCEEDED:
                    # The connector refused or was unreachable: nothing changed there, so undo our claim.
                    async with self._pool.acquire() as conn:
                        await store.claim_status(
                            conn,
                            tenant=tenant,
                            payment_id=payment_id,
                            allowed=["processing"],
                            target=row["previous_status"],
                        )
                    if result is None and refusal is None:
                        raise errors.Unavailable("The connector could not release the payment; retry.")
                    reason = (
                        refusal.code if refusal is not None else (result and result.decline_code) or "refused"
                    )
                    raise errors.Conflict(
                        f"The processor refused to cancel this payment ({reason}).",
                        code="payment_cancel_refused",
                    )
            decision = Decision(store.PaymentUpdate(Status.CANCELED), "succeeded", "payment.canceled", 0)
            return await self._apply(
                tenant,
                payment_id,
                attempt_id,
                decision,
                connector=row["connector"],
                currency=row["currency"],
                keyed=keyed,
                actor=identity,
                source=source,
                action="payment.cancel",
            )

        return await run_idempotent(self._pool, keyed, work)

    async def _why_not(self, conn: Connection, tenant: str, payment_id: str, action: str) -> errors.ApiError:
        row = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
        if row is None:
            return errors.NotFound(f"No such payment: '{payment_id}'.", param="id")
        return errors.Conflict(
            f"You cannot {action} this payment because it has a status of {row['status']}.",
            code="payment_unexpected_state",
        )

    # ---- settle unknown outcomes -----------------------------------------------------------

    async def resolve_due(self, *, limit: int = 50) -> int:
        """Ask connectors about attempts whose outcome is pending or unknown; apply what they say.

        Attempts are claimed with FOR UPDATE SKIP LOCKED and pushed forward, so any number of
        gateway processes can run this without asking twice about the same attempt.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            due = await conn.fetch(
                """
                WITH due AS (
                    SELECT a.id FROM payment_attempts a
                    WHERE a.status IN ('pending', 'unknown') AND a.next_check <= now()
                      AND a.operation IN ('authorize', 'capture', 'void', 'refund', 'post_bill')
                    ORDER BY a.next_check LIMIT $1 FOR UPDATE SKIP LOCKED
                )
                UPDATE payment_attempts a SET next_check = now() + interval '30 seconds', tries = a.tries + 1
                FROM due, payments p
                WHERE a.id = due.id AND p.id = a.payment_id
                RETURNING a.id, a.payment_id, a.tenant, a.operation, a.connector, a.amount, a.tries,
                          a.refund_id,
                          p.currency, p.capture_method
                """,
                limit,
            )
        for attempt in due:
            await self._resolve(attempt)
        return len(due)

    async def _resolve(self, attempt: Any) -> None:
        if attempt["operation"] == "refund":
            if not (self.refunds is not None and await self.refunds.resolve(attempt)):
                await self._recheck_later(attempt)
            return
        if attempt["operation"] == "post_bill":
            # For a bill posting the attempt's `connector` column holds the biller id.
            settled = self.bills is not None and await self.bills.resolve(
                attempt["tenant"],
                attempt["payment_id"],
                attempt["id"],
                attempt["connector"],
                tries=attempt["tries"],
            )
            if not settled:
                await self._recheck_later(attempt)
            return
        connector = self._connectors.get(attempt["connector"])
        if connector is None:
            return
        try:
            result = await connector.sync(attempt_id=attempt["id"], operation=attempt["operation"])
        except ConnectorError:
            result = None  # the connector is unreachable right now: ask again later
        if result is None or result.outcome in (ConnectorOutcome.PENDING, ConnectorOutcome.REQUIRES_ACTION):
            await self._recheck_later(attempt)
            return
        await self.settle_attempt(attempt["connector"], attempt["id"], result, action="payment.resolve")

    async def _recheck_later(self, attempt: Any) -> None:
        delay = RESOLVE_BACKOFF[min(attempt["tries"], len(RESOLVE_BACKOFF) - 1)]
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE payment_attempts SET next_check = now() + make_interval(secs => $2) WHERE id = $1",
                attempt["id"],
                delay,
            )

    async def settle_attempt(
        self, connector: str, attempt_id: str, result: ConnectorResult, *, action: str = "payment.callback"
    ) -> bool:
        """Apply a definite answer (callback or status inquiry) to an attempt still in flight.

        Idempotent against duplicate and out-of-order notices: the attempt row is locked and only
        a ``started``/``pending``/``unknown`` attempt changes; a settled one is left as it is, so the
        second of two identical callbacks, or a late "pending" after a "succeeded", changes nothing.
        Returns whether this call changed the payment.
        """
        if result.outcome is ConnectorOutcome.PENDING:
            return False
        post_bill = False
        async with self._pool.acquire() as conn, conn.transaction():
            attempt = await conn.fetchrow(
                """
                SELECT a.id, a.payment_id, a.tenant, a.operation, a.amount, a.status,
                       p.currency, p.capture_method, p.status AS payment_status, p.amount_authorized, p.biller
                FROM payment_attempts a JOIN payments p ON p.id = a.payment_id
                WHERE a.id = $1 AND a.connector = $2
                FOR UPDATE OF a
                """,
                attempt_id,
                connector,
            )
            if attempt is None or attempt["status"] not in ("started", "pending", "unknown"):
                return False
            if attempt["operation"] == "capture":
                decision = after_capture(result, amount=attempt["amount"])
            elif attempt["operation"] == "void":
                decision = after_void(result, authorized=attempt["amount_authorized"] > 0)
            elif attempt["operation"] == "authorize":
                decision = after_authorize(
                    result, amount=attempt["amount"], capture=attempt["capture_method"] == "automatic"
                )
                # Money collected asynchronously for a bill is posted now, like a synchronous one.
                decision, post_bill = _hold_for_bill(decision, has_bill=attempt["biller"] is not None)
            else:
                return False
            if (
                result.outcome is ConnectorOutcome.REQUIRES_ACTION
                and attempt["payment_status"] == "requires_action"
            ):
                return False  # nothing new
            await self.apply_in(
                conn,
                attempt["tenant"],
                attempt["payment_id"],
                attempt_id,
                decision,
                connector=connector,
                currency=attempt["currency"],
                keyed=None,
                actor=None,
                source=None,
                action=action,
            )
        if post_bill and self.bills is not None:
            await self.bills.post(
                attempt["tenant"], attempt["payment_id"], keyed=None, actor=None, source=None
            )
        return True

    # ---- apply an outcome ------------------------------------------------------------------

    async def _apply(
        self,
        tenant: str,
        payment_id: str,
        attempt_id: str | None,
        decision: Decision,
        *,
        connector: str | None,
        currency: str,
        keyed: KeyedRequest | None,
        actor: Identity | None,
        source: str | None,
        action: str,
    ) -> Outcome:
        async with self._pool.acquire() as conn, conn.transaction():
            return await self.apply_in(
                conn,
                tenant,
                payment_id,
                attempt_id,
                decision,
                connector=connector,
                currency=currency,
                keyed=keyed,
                actor=actor,
                source=source,
                action=action,
            )

    async def apply_in(
        self,
        conn: Connection,
        tenant: str,
        payment_id: str,
        attempt_id: str | None,
        decision: Decision,
        *,
        connector: str | None,
        currency: str,
        keyed: KeyedRequest | None,
        actor: Identity | None,
        source: str | None,
        action: str,
    ) -> Outcome:
        """Phase 3, inside the caller's transaction: payment + attempt, ledger, event, audit, response."""
        row = await store.apply_result(
            conn,
            tenant=tenant,
            payment_id=payment_id,
            update=decision.update,
            attempt_id=attempt_id or "",
            attempt_status=decision.attempt_status,
            decline_code=decision.update.failure_code,
        )
        if row is None:
            # A callback settled this attempt while we waited for the connector: answer with the
            # payment as it stands (and store that as the idempotent response), record nothing twice.
            current = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
            assert current is not None
            body = render.encode(render.payment(current))
            if keyed is not None:
                await idempotency.finish(conn, tenant=tenant, key=keyed.key, status=200, body=body)
            return Outcome(200, body)
        if connector is not None:
            await _post_ledger(conn, row, decision, connector)
        self._metrics.payments.labels(row["method"], row["status"], connector or "ledger").inc()
        body = render.encode(render.payment(row))
        await record_and_log(
            conn,
            OutcomeRecord(
                tenant=tenant,
                object_id=payment_id,
                event_id=new_id("evt"),
                event_type=decision.event,
                body=body,
                actor=actor.spiffe_id if actor else "payhub",
                action=action,
                outcome=row["status"],
                source=source,
                details={"amount": row["amount"], "currency": currency, "method": row["method"]},
                idempotency_key=keyed.key if keyed else None,
            ),
        )
        return Outcome(200, body)


async def _post_ledger(conn: Connection, row: Any, decision: Decision, connector: str) -> None:
    """The ledger side of a connector outcome.

    A payment's captured funds go from the connector's receivable to the tenant's clearing
    account. A top-up's go to the customer's stored balance; while a bank transfer is still
    settling they sit in the balance's ``pending`` bucket, then move to ``available`` (or back
    out if the transfer fails).
    """
    tenant, currency, payment_id = row["tenant"], row["currency"], row["id"]
    receivable = ledger.SystemAccount(tenant, "connector_receivable", connector, currency)
    destination = row["destination_account"]
    moves: list[ledger.Move] = []
    kind = ""
    if destination is None:
        if decision.captured:
            kind = "payment_capture"
            # Money collected for a bill is owed to the biller, not to the tenant.
            to: ledger.SystemAccount = (
                ledger.SystemAccount(tenant, "biller_payable", row["biller"], currency)
                if row["biller"]
                else ledger.SystemAccount(tenant, "tenant_clearing", "default", currency)
            )
            moves = [ledger.Move(receivable, to, decision.captured, currency)]
    else:
        pending_posted = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM ledger_transactions "
            "WHERE payment_id = $1 AND kind = 'topup_pending')",
            payment_id,
        )
        amount = row["amount"]
        if decision.captured and pending_posted:
            kind = "topup_settled"
            moves = [
                ledger.Move(destination, destination, amount, currency, "pending", "available"),
                ledger.Move(receivable, receivable, amount, currency, "available", "pending"),
            ]
        elif decision.captured:
            kind = "topup"
            moves = [ledger.Move(receivable, destination, decision.captured, currency)]
        elif row["status"] == Status.PROCESSING and not pending_posted:
            kind = "topup_pending"
            moves = [ledger.Move(receivable, destination, amount, currency, "pending", "pending")]
        elif row["status"] == Status.FAILED and pending_posted:
            kind = "topup_reversed"
            moves = [ledger.Move(destination, receivable, amount, currency, "pending", "pending")]
    if moves:
        await ledger.post(conn, tenant=tenant, kind=kind, moves=moves, payment_id=payment_id)


class RefundResolver(Protocol):
    async def resolve(self, attempt: Any) -> bool: ...


def _hold_for_bill(decision: Decision, *, has_bill: bool) -> tuple[Decision, bool]:
    """A bill payment's collected money is not a success yet: it stays processing until posted."""
    if not has_bill or decision.update.status != Status.SUCCEEDED or not decision.captured:
        return decision, False
    update = dataclasses.replace(decision.update, status=Status.PROCESSING)
    return Decision(update, decision.attempt_status, "payment.processing", decision.captured), True


def _bill_json(bill: schemas.BillInput | None) -> str | None:
    if bill is None:
        return None
    return orjson.dumps(
        {"biller": bill.biller, "customer_params": bill.customer_params, "bill_ref": bill.bill_ref}
    ).decode()


def _customer_dict(customer: schemas.CustomerInput | None) -> dict[str, Any]:
    if customer is None:
        return {}
    return {
        k: v
        for k, v in (
            ("id", customer.id),
            ("email", customer.email),
            ("phone", customer.phone),
            ("ip", customer.ip),
            ("device_id", customer.device_id),
            ("country", customer.country),
        )
        if v is not None
    }


def _customer_json(customer: schemas.CustomerInput | None) -> str | None:
    return orjson.dumps(_customer_dict(customer)).decode() if customer is not None else None
