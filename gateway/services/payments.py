"""Payments: create (every method), capture, cancel, and applying connector answers.

Each money-moving request runs in three phases around the connector call (Brandur Leach's
atomic phases): (1) one transaction records the payment and the attempt and sets the recovery
point; (2) the connector is called *outside* any transaction, with the attempt id as its
idempotency reference; (3) :mod:`gateway.services.settle` applies the answer in one transaction.
A crash between phases leaves a recovery point a retry resumes from, with the same attempt id,
so the connector never charges twice; an attempt nobody retries is settled by the resolver.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
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
from crypto.cards import CardDisplay
from gateway import errors
from gateway.domain.bill_posting import Posting, state_of
from gateway.domain.fx import FxLeg
from gateway.domain.ledger_rules import Movement, Result
from gateway.domain.payment_state import CANCELABLE, CAPTURABLE, Status
from gateway.identity import Identity
from gateway.ids import new_id
from gateway.logs import get_logger
from gateway.services.bills import BillPoster, collected_for_bill
from gateway.services.fx import FxService
from gateway.services.idempotent import KeyedRequest, Outcome, run_idempotent
from gateway.services.inputs import (
    PreparedMethod,
    check_customer,
    free_text,
    method_block,
    money,
    refuse_card_numbers,
)
from gateway.services.outcomes import (
    Decision,
    after_authorize,
    after_capture,
    after_error,
    after_void,
    refused,
    stays,
)
from gateway.services.risk import RiskService, Screening
from gateway.services.settle import HUB, Caller, Settler, book
from gateway.store import idempotency, ledger
from gateway.store import payments as store
from gateway.store import risk as risk_store
from gateway.store.idempotency import Claimed
from gateway.store.intake import Intake, intake
from gateway.store.keyring import KeyringCache
from gateway.store.risk import RiskKeys
from gateway.store.settlement import Known
from gateway.store.types import Connection, Rider
from gateway.store.vault import RiderFor, SealedCard, get_card, reveal_pan, seal_card, vault_card_riding
from gateway.views import schemas
from risk.decision import Reason
from risk.features import PaymentFacts
from risk.rules import Action

log = get_logger("gateway.payments")

RECOVERY_ATTEMPT_CREATED = "attempt_created"
IN_FLIGHT = ("started", "pending", "unknown")


class CallbackMismatch(Exception):
    """A verified notice names an amount or currency that is not its attempt's: nothing is applied."""


def _mismatch(result: ConnectorResult, *, amount: int, currency: str) -> str | None:
    """Why a definite answer cannot be about this attempt (None when it can)."""
    if result.currency is not None and result.currency.upper() != currency:
        return f"currency {result.currency} is not the attempt's {currency}"
    told = result.amount_captured or result.amount_authorized
    if result.outcome is ConnectorOutcome.SUCCEEDED and told and told != amount:
        return f"amount {told} is not the attempt's {amount}"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Released:
    """A held payment moved to processing with a new authorize attempt."""

    payment: store.Payment
    held_details: str | None
    attempt_id: str


class Holder(Protocol):
    """What a create needs of gateway/services/holds.py (which builds on this module)."""

    async def hold(
        self,
        payment: store.NewPayment,
        screening: Screening,
        customer: schemas.CustomerInput | None,
        caller: Caller,
        *,
        recorded: str | None = None,
    ) -> Outcome: ...


class PaymentService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        keyring: KeyringCache,
        connectors: Mapping[str, PaymentConnector],
        routing: Mapping[str, Sequence[str]],  # method → connectors in fallback order
        settler: Settler,
    ) -> None:
        self.bills: BillPoster | None = None  # set when biller connectors are configured
        self.risk: RiskService | None = None  # set when risk screening is on
        self.holds: Holder | None = None  # step-up and review of held payments, set with risk
        self.fx: FxService | None = None  # quotes that pay a bill in another currency
        self._pool = pool
        self._keyring = keyring
        self._connectors = connectors
        self._routing = routing
        self._settler = settler

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    def connector(self, name: str) -> PaymentConnector | None:
        return self._connectors.get(name)

    # ---- create ----------------------------------------------------------------------------

    async def create(
        self,
        identity: Identity,
        params: schemas.CreatePaymentRequest,
        keyed: KeyedRequest,
        source: str | None,
    ) -> Outcome:
        amount, currency = money(params.amount, params.currency)
        method_block(params.payment_method)  # refuse a missing method block before claiming the key
        check_customer(params.customer)
        refuse_card_numbers(free_text(params))
        if params.fx_quote is not None and params.bill is None:
            raise errors.InvalidRequest(
                "An fx_quote pays a bill in another currency: give the bill too.", param="fx_quote"
            )
        caller = Caller(identity, source, keyed)
        at_once = self._at_once(identity.tenant, params, amount, currency, keyed)

        async def work(claim: Claimed) -> Outcome:
            if at_once is not None and at_once.recorded(claim):
                return await self._after_intake(at_once, caller)
            if claim.object_id is not None:
                return await self._resume_create(identity.tenant, claim.object_id, params, caller)
            checked, fx = params, None
            if params.bill is not None:
                # After the key claim: a replay answers from the stored response, never the biller.
                checked, fx = await self._check_bill(identity, params, amount, currency, key=keyed.key)
            return await self._create(
                identity, checked, amount=amount, currency=currency, caller=caller, fx=fx
            )

        claim = (lambda: self._intake(at_once)) if at_once is not None else None
        return await run_idempotent(self._pool, keyed, work, claim=claim)

    async def _check_bill(
        self,
        identity: Identity,
        params: schemas.CreatePaymentRequest,
        amount: int,
        currency: str,
        *,
        key: str,
    ) -> tuple[schemas.CreatePaymentRequest, FxLeg | None]:
        """Every biller check before money is collected; returns params with normalised customer_params,
        and the claimed FX quote when the bill is paid in another currency."""
        bill = params.bill
        assert bill is not None
        if self.bills is None:
            raise errors.InvalidRequest("No biller connectors are configured.", param="bill.biller")
        if params.capture_method != "automatic":
            raise errors.InvalidRequest(
                "A bill payment is captured automatically: the biller is paid with collected money.",
                param="capture_method",
            )
        quote = None
        due_amount, due_currency = amount, currency
        if params.fx_quote is not None:
            if self.fx is None:
                raise errors.InvalidRequest("FX quotes are not available.", param="fx_quote")
            quote = await self.fx.check(identity.tenant, params.fx_quote, amount=amount, currency=currency)
            due_amount, due_currency = quote.to_amount, quote.to_currency
        try:
            checked = await self.bills.directory.validate_payment(
                bill.biller,
                bill.customer_params,
                due_amount,
                due_currency,
                bill.bill_ref,
                tenant=identity.tenant,
            )
        except errors.InvalidRequest as exc:
            if quote is None or exc.param not in ("amount", "currency"):
                raise
            # What the quote delivers does not pay this bill: the quote is what is wrong.
            raise errors.InvalidRequest(
                f"With quote {quote.id}: {exc.message}", code=exc.code, param="fx_quote"
            ) from exc
        fx = None
        if quote is not None:
            assert self.fx is not None
            fx = await self.fx.claim(quote, key=key)
        normalised = msgspec.structs.replace(bill, customer_params=dict(checked.customer_params))
        return msgspec.structs.replace(params, bill=normalised), fx

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
        method_block(params.payment_method)
        refuse_card_numbers(free_text(params))
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
        caller = Caller(identity, source, keyed)

        async def work(claim: Claimed) -> Outcome:
            if claim.object_id is not None:
                return await self._resume_create(identity.tenant, claim.object_id, payment, caller)
            return await self._create(
                identity, payment, amount=amount, currency=currency, caller=caller, destination=account_id
            )

        return await run_idempotent(self._pool, keyed, work)

    async def _screen(
        self,
        tenant: str,
        params: schemas.CreatePaymentRequest,
        amount: int,
        currency: str,
        prepared: PreparedMethod | None,
    ) -> Screening | None:
        """The risk decision (None when risk screening is off)."""
        if self.risk is None:
            return None
        facts = payment_facts(
            tenant, params, amount=amount, currency=currency, prepared=prepared, risk=self.risk
        )
        fingerprint = prepared.fingerprint if prepared is not None else None
        read = prepared.risk_read if prepared is not None else None
        return await self.risk.screen(facts, card_fingerprint=fingerprint, read=read)

    def _rider_for(
        self, tenant: str, params: schemas.CreatePaymentRequest, amount: int, currency: str
    ) -> RiderFor | None:
        """The risk feature read as a rider of the vault's statement: it needs the card's BIN and
        fingerprint, which the vault computes."""
        risk = self.risk
        if risk is None:
            return None
        facts = payment_facts(tenant, params, amount=amount, currency=currency, prepared=None, risk=risk)

        def rider_for(display: CardDisplay, fingerprint: bytes) -> Rider:
            card = dataclasses.replace(facts, card_bin=display.bin, card_brand=display.brand)
            return risk.rider(card, fingerprint.hex())

        return rider_for

    def _candidates(self, method: str) -> list[PaymentConnector]:
        candidates = [
            self._connectors[name] for name in self._routing.get(method, ()) if name in self._connectors
        ]
        if not candidates:
            raise errors.InvalidRequest(
                f"No connector is configured for {method} payments.", param="payment_method.type"
            )
        return candidates

    async def _create(
        self,
        identity: Identity,
        params: schemas.CreatePaymentRequest,
        *,
        amount: int,
        currency: str,
        caller: Caller,
        destination: str | None = None,
        fx: FxLeg | None = None,
    ) -> Outcome:
        tenant = identity.tenant
        method = params.payment_method
        if method.type == "balance":
            return await self._create_balance_payment(
                identity, params, amount=amount, currency=currency, caller=caller, fx=fx
            )
        candidates = self._candidates(method.type)
        prepared = await self._prepare(
            tenant, method, rider_for=self._rider_for(tenant, params, amount, currency)
        )
        screening = await self._screen(tenant, params, amount, currency, prepared)
        if screening is not None and method.type not in HOLDABLE:
            screening = not_holdable(screening, method.type)
        payment_id, attempt_id = new_id("pay"), new_id("att")
        assert caller.keyed is not None
        payment = _new_payment(
            tenant,
            params,
            payment_id=payment_id,
            amount=amount,
            currency=currency,
            display=prepared.display,
            connector=candidates[0].name,
            risk=_risk_json(screening),
            risk_keys=screening.keys if screening else RiskKeys(),
            destination=destination,
            fx=fx,
        )
        if _held(screening):
            return await self._hold(payment, screening, prepared, params.customer, caller)
        async with self._pool.acquire() as conn:
            row, version = await store.start_payment(
                conn,
                payment,
                attempt_id=attempt_id,
                idempotency_key=caller.keyed.key,
                recovery_point=RECOVERY_ATTEMPT_CREATED,
            )
        if self.risk is not None:
            await self.risk.counted(tenant, payment_id, payment.risk_keys)
        request = _payment_request(
            tenant, payment_id, attempt_id, params, amount=amount, currency=currency, prepared=prepared
        )
        return await self._authorize(
            request, candidates, caller, has_bill=params.bill is not None, known=Known(row, version)
        )

    async def _hold(
        self,
        payment: store.NewPayment,
        screening: Screening | None,
        prepared: PreparedMethod,
        customer: schemas.CustomerInput | None,
        caller: Caller,
        *,
        recorded: str | None = None,
    ) -> Outcome:
        """A decision other than allow: the payment waits (step-up, review) or is refused. ``recorded``
        is the first attempt of a payment recorded before its decision (never sent)."""
        assert self.holds is not None
        assert screening is not None
        if screening.decision.action is not Action.BLOCK:  # held: its connector call comes later
            payment = dataclasses.replace(payment, held_details=_held_json(prepared))
        return await self.holds.hold(payment, screening, customer, caller, recorded=recorded)

    # ---- phase 1 in one statement ----------------------------------------------------------------

    def _at_once(
        self,
        tenant: str,
        params: schemas.CreatePaymentRequest,
        amount: int,
        currency: str,
        keyed: KeyedRequest,
    ) -> AtOnce | None:
        """A connector payment without a bill, paid with a card number or a method that needs no lookup,
        records its phase 1 in the statement that claims its key (gateway/store/intake.py). Others
        (bills, balance, vault tokens) claim first and go step by step."""
        method = params.payment_method
        if params.bill is not None or method.type not in AT_ONCE:
            return None
        block = method_block(method)
        if isinstance(block, schemas.CardInput) and (block.token is not None or block.number is None):
            return None
        candidates = self._candidates(method.type)
        facts = (
            payment_facts(tenant, params, amount=amount, currency=currency, prepared=None, risk=self.risk)
            if self.risk is not None
            else None
        )
        ids = new_id("pay"), new_id("att")
        return AtOnce(tenant, params, keyed, candidates, amount, currency, *ids, facts)

    async def _intake(self, at_once: AtOnce) -> idempotency.ClaimResult | None:
        """Run the intake statement as the key's claim (None: nothing claimed, claim on its own)."""
        params = at_once.params
        block = method_block(params.payment_method)
        async with self._pool.acquire() as conn:
            sealed = None
            if isinstance(block, schemas.CardInput):
                number, month, year = _card_fields(block)
                keyring = await self._keyring.current(conn)
                try:
                    sealed = seal_card(
                        keyring, tenant=at_once.tenant, pan=number, exp_month=month, exp_year=year
                    )
                except ValueError as exc:
                    raise errors.InvalidRequest(
                        str(exc), code="invalid_card", param="payment_method.card"
                    ) from exc
                at_once.card(sealed)
                # The token comes from the vault CTE: the card's own, new or on file.
                display: Mapping[str, Any] = _card_display(sealed.display, token="")
            else:
                at_once.prepared = await self._prepare(at_once.tenant, params.payment_method)
                display = at_once.prepared.display
            risk, facts, fingerprint = self.risk, at_once.facts, at_once.fingerprint
            keys = risk.keys(facts, fingerprint) if risk is not None and facts is not None else RiskKeys()
            at_once.payment = _new_payment(
                at_once.tenant,
                params,
                payment_id=at_once.payment_id,
                amount=at_once.amount,
                currency=at_once.currency,
                display=display,
                connector=at_once.candidates[0].name,
                risk=None,  # decided after this statement, written by phase 3 or the hold
                risk_keys=keys,
            )
            keyed = at_once.keyed
            at_once.done = await intake(
                conn,
                card=sealed,
                claim=(keyed.tenant, keyed.key, keyed.method, keyed.path, keyed.fingerprint),
                payment=at_once.payment,
                attempt_id=at_once.attempt_id,
                rider=risk.rider(facts, fingerprint) if risk is not None and facts is not None else None,
            )
        return at_once.done.claim

    async def _after_intake(self, at_once: AtOnce, caller: Caller) -> Outcome:
        """The intake recorded the payment: decide, then hold it or send its first attempt."""
        done, payment = at_once.done, at_once.payment
        assert done is not None
        assert done.payment is not None
        assert payment is not None
        row, version = done.payment
        prepared = at_once.prepared_method()
        payment = dataclasses.replace(payment, payment_method=row.payment_method)
        screening = None
        if self.risk is not None and at_once.facts is not None:
            read = risk_store.stored_features(done.riding) if done.riding is not None else None
            screening = await self.risk.screen(at_once.facts, card_fingerprint=at_once.fingerprint, read=read)
            if payment.method not in HOLDABLE:
                screening = not_holdable(screening, payment.method)
            payment = dataclasses.replace(payment, risk=_risk_json(screening))
        if _held(screening):
            return await self._hold(
                payment, screening, prepared, at_once.params.customer, caller, recorded=at_once.attempt_id
            )
        if self.risk is not None:
            await self.risk.counted(payment.tenant, payment.id, payment.risk_keys)
        request = _payment_request(
            payment.tenant,
            payment.id,
            at_once.attempt_id,
            at_once.params,
            amount=payment.amount,
            currency=payment.currency,
            prepared=prepared,
        )
        return await self._authorize(
            request, at_once.candidates, caller, has_bill=False, known=Known(row, version), risk=payment.risk
        )

    async def _resume_create(
        self, tenant: str, payment_id: str, params: schemas.CreatePaymentRequest, caller: Caller
    ) -> Outcome:
        """A retry of a create whose first run stopped: carry on from where it stopped, same ids."""
        async with self._pool.acquire() as conn:
            row = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
            attempt = await store.latest_attempt(conn, payment_id=payment_id, operation="authorize")
        assert row is not None  # written in the same statement as the recovery point
        if attempt is not None and attempt.status == "started":
            # Phase 2 never finished: ask again with the same attempt id (the processor
            # de-duplicates on it) at the connector that attempt went to.
            connector = self._connectors[attempt.connector]
            candidates = self._candidates(row.method)
            candidates = candidates[candidates.index(connector) :] if connector in candidates else [connector]
            risk = None
            if self.risk is not None and row.risk is None:
                # Recorded by the intake statement, and stopped before its decision was written
                # (that is phase 3's): decide again. An allow sends the attempt again, as above.
                rider_for = self._rider_for(tenant, params, row.amount, row.currency)
                prepared = await self._prepare(tenant, params.payment_method, rider_for=rider_for)
                screening = await self._screen(tenant, params, row.amount, row.currency, prepared)
                if row.method not in HOLDABLE:
                    screening = not_holdable(screening, row.method) if screening is not None else None
                risk = _risk_json(screening)
                if _held(screening):
                    # The first run may have sent the attempt (after an allow) before it stopped, so
                    # the payment cannot be held now: the resolver asks the connector at once. An
                    # attempt it never received fails; one it did settles as answered.
                    async with self._pool.acquire() as conn:
                        await store.mark_unknown(conn, attempt_id=attempt.id, recheck_in=0.0)
                        return await self._settler.current(conn, tenant, payment_id, caller)
            else:
                prepared = await self._prepare(tenant, params.payment_method)
            request = _payment_request(
                tenant,
                payment_id,
                attempt.id,
                params,
                amount=row.amount,
                currency=row.currency,
                prepared=prepared,
            )
            return await self._authorize(
                request, candidates, caller, has_bill=row.biller is not None, risk=risk
            )
        if self.bills is not None and state_of(row.bill_posting) in (Posting.POSTING, Posting.PENDING):
            return await self.bills.post(tenant, payment_id, caller)
        async with self._pool.acquire() as conn:
            return await self._settler.current(conn, tenant, payment_id, caller)

    async def _authorize(
        self,
        request: PaymentRequest,
        candidates: list[PaymentConnector],
        caller: Caller,
        *,
        has_bill: bool,
        action: str = "payment.create",
        current: Status = Status.NEW,
        known: Known | None = None,
        risk: str | None = None,
    ) -> Outcome:
        """Phases 2 and 3 of a create: the connector call (with fallback), then apply. ``current``
        is the payment's status while it waits: ``processing`` for a released held payment;
        ``known`` the row phase 1 wrote (phase 3 then needs no read); ``risk`` the decision of a
        payment recorded before it was made (phase 3 writes it)."""
        tenant, payment_id, attempt_id = request.tenant, request.payment_id, request.attempt_id
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
                        amount=request.amount,
                    )
                attempt_id, known = request.attempt_id, None  # the fallback changed the row
            except ConnectorError as exc:
                decision = after_error(exc)
                break
            else:
                decision = after_authorize(result, amount=request.amount, capture=request.capture)
                break
        decision = collected_for_bill(decision, current=current) if has_bill else decision
        decision = stays(decision, current)
        if risk is not None:
            decision = dataclasses.replace(decision, update=dataclasses.replace(decision.update, risk=risk))
        async with self._pool.acquire() as conn:  # one statement: no transaction needed
            outcome = await self._apply_create(
                conn, tenant, payment_id, attempt_id, decision, caller=caller, action=action, known=known
            )
        return await self._post_if_collected(tenant, payment_id, decision, outcome, caller)

    async def _apply_create(
        self,
        conn: Connection,
        tenant: str,
        payment_id: str,
        attempt_id: str | None,
        decision: Decision,
        *,
        caller: Caller,
        action: str = "payment.create",
        known: Known | None = None,
    ) -> Outcome:
        """Phase 3 of a create; a bill payment's response is stored only after its posting."""
        answering = caller.unkeyed() if decision.post_bill else caller
        return await self._settler.payment(
            conn, tenant, payment_id, attempt_id, decision, caller=answering, action=action, known=known
        )

    # ---- held payments go on (step-up passed, review approved) -----------------------------------

    async def release(
        self, conn: Connection, row: store.Payment, caller: Caller, *, allowed: frozenset[Status]
    ) -> Released | None:
        """Phase 1 for a held payment, in the caller's transaction: to processing, with its attempt."""
        attempt_id = new_id("att")
        released = await store.release_held(
            conn,
            tenant=row.tenant,
            payment_id=row.id,
            allowed=sorted(allowed),
            attempt_id=attempt_id,
            connector=self._candidates(row.method)[0].name,
            idempotency_key=caller.key,
            recovery_point=RECOVERY_ATTEMPT_CREATED,
        )
        return Released(released[0], released[1], attempt_id) if released is not None else None

    async def authorize_released(self, released: Released, caller: Caller, *, action: str) -> Outcome:
        """Phases 2 and 3 for a released payment (also a retry after a crash, same attempt id)."""
        row = released.payment
        connector = self._connectors.get(row.connector or "")
        candidates = self._candidates(row.method)
        if connector is not None and connector in candidates:
            candidates = candidates[candidates.index(connector) :]
        request = await self._held_request(row, released.held_details, released.attempt_id)
        return await self._authorize(
            request,
            candidates,
            caller,
            has_bill=row.biller is not None,
            action=action,
            current=Status.PROCESSING,
        )

    async def resume_released(self, tenant: str, payment_id: str, caller: Caller, *, action: str) -> Outcome:
        """A retried confirm whose first run stopped after releasing the payment: same attempt."""
        async with self._pool.acquire() as conn:
            row = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
            attempt = await store.latest_attempt(conn, payment_id=payment_id, operation="authorize")
            details = await store.held_details(conn, payment_id=payment_id)
        assert row is not None
        if attempt is not None and attempt.status == "started":
            return await self.authorize_released(Released(row, details, attempt.id), caller, action=action)
        async with self._pool.acquire() as conn:
            return await self._settler.current(conn, tenant, payment_id, caller)

    async def _held_request(self, row: store.Payment, held: str | None, attempt_id: str) -> PaymentRequest:
        card = None
        if row.method == "card":
            display = orjson.loads(row.payment_method)["card"]
            async with self._pool.acquire() as conn:
                pan = await reveal_pan(conn, self._keyring, tenant=row.tenant, token_id=display["token"])
            if pan is None:
                raise errors.Conflict("The payment's vaulted card is no longer available.")
            # The CVC was never stored (DESIGN §7): a released card payment goes without it.
            card = CardData(pan, display["exp_month"], display["exp_year"], None, None)
        return PaymentRequest(
            attempt_id=attempt_id,
            payment_id=row.id,
            tenant=row.tenant,
            amount=row.amount,
            currency=row.currency,
            method=row.method,
            capture=row.capture_method == "automatic",
            card=card,
            details=orjson.loads(held) if held else {},
            customer=orjson.loads(row.customer) if row.customer else {},
            description=row.description,
        )

    async def _post_if_collected(
        self, tenant: str, payment_id: str, decision: Decision, outcome: Outcome, caller: Caller
    ) -> Outcome:
        if decision.post_bill and self.bills is not None:
            return await self.bills.post(tenant, payment_id, caller)
        return outcome

    async def _prepare(
        self, tenant: str, method: schemas.PaymentMethodInput, *, rider_for: RiderFor | None = None
    ) -> PreparedMethod:
        block = method_block(method)
        if isinstance(block, schemas.CardInput):
            return await self._prepare_card(tenant, block, rider_for)
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

    async def _prepare_card(
        self, tenant: str, card: schemas.CardInput, rider_for: RiderFor | None = None
    ) -> PreparedMethod:
        read = None
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
                number, month, year = _card_fields(card)
                keyring = await self._keyring.current(conn)
                try:
                    # The payment's risk feature read rides in the vault's round trip.
                    stored, riding = await vault_card_riding(
                        conn,
                        keyring,
                        tenant=tenant,
                        pan=number,
                        exp_month=month,
                        exp_year=year,
                        rider_for=rider_for,
                    )
                    read = risk_store.stored_features(riding) if riding is not None else None
                except ValueError as exc:
                    raise errors.InvalidRequest(
                        str(exc), code="invalid_card", param="payment_method.card"
                    ) from exc
                pan = _digits(number)
        d = stored.display
        data = CardData(pan, d.exp_month, d.exp_year, card.cvc, card.holder_name)
        display = _card_display(d, token=stored.token_id)
        return PreparedMethod(display, card=data, fingerprint=stored.fingerprint.hex(), risk_read=read)

    async def _create_balance_payment(
        self,
        identity: Identity,
        params: schemas.CreatePaymentRequest,
        *,
        amount: int,
        currency: str,
        caller: Caller,
        fx: FxLeg | None,
    ) -> Outcome:
        """A stored-balance payment is a ledger move: no connector, one transaction.

        For a bill, the same transaction records the post attempt and the key's recovery point, so
        a retry after a crash posts (again, same reference) and never debits twice.
        """
        tenant = identity.tenant
        account_id = method_block(params.payment_method).account
        payment_id = new_id("pay")
        bill = params.bill
        assert caller.keyed is not None
        screening = await self._screen(tenant, params, amount, currency, None)
        if screening is not None:
            screening = not_holdable(screening, "balance")
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
            row, version = await store.insert_payment(
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
                    biller=bill.biller if bill else None,
                    bill=_bill_json(bill, fx),
                    risk=_risk_json(screening),
                    risk_keys=screening.keys if screening else RiskKeys(),
                ),
            )
            known = Known(row, version, uncommitted=True)  # booking below leaves the row as it is
            if screening is not None and screening.decision.action is Action.BLOCK:
                return await self._apply_create(
                    conn, tenant, payment_id, None, BLOCKED, caller=caller, known=known
                )
            try:
                async with conn.transaction():  # savepoint: an overdraft fails the payment, not the request
                    await book(conn, row, Movement.COLLECT, Result.SUCCEEDED, amount)
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
            if bill is not None:
                decision = collected_for_bill(decision, current=Status.NEW)
            if decision.post_bill:
                await idempotency.set_recovery_point(
                    conn,
                    tenant=tenant,
                    key=caller.keyed.key,
                    point=RECOVERY_ATTEMPT_CREATED,
                    object_id=payment_id,
                )
            outcome = await self._apply_create(
                conn, tenant, payment_id, None, decision, caller=caller, known=known
            )
        if self.risk is not None and screening is not None:
            await self.risk.counted(tenant, payment_id, screening.keys)
        return await self._post_if_collected(tenant, payment_id, decision, outcome, caller)

    # ---- capture / cancel ------------------------------------------------------------------

    async def capture(
        self, identity: Identity, payment_id: str, amount: int | None, keyed: KeyedRequest, source: str | None
    ) -> Outcome:
        caller = Caller(identity, source, keyed)
        tenant = identity.tenant

        async def work(claim: Claimed) -> Outcome:
            if claim.object_id is not None:
                return await self._resume(tenant, payment_id, "capture", caller)
            async with self._pool.acquire() as conn, conn.transaction():
                claimed = await store.claim_status(
                    conn,
                    tenant=tenant,
                    payment_id=payment_id,
                    allowed=sorted(CAPTURABLE),
                    target="processing",
                )
                if claimed is None:
                    raise await self._why_not(conn, tenant, payment_id, "capture")
                row, _ = claimed
                to_capture = row.amount_authorized if amount is None else amount
                if not 0 < to_capture <= row.amount_authorized:
                    raise errors.InvalidRequest(
                        f"amount_to_capture must be between 1 and {row.amount_authorized}.",
                        param="amount_to_capture",
                    )
                attempt_id = new_id("att")
                await store.insert_attempt(
                    conn,
                    attempt_id=attempt_id,
                    payment_id=payment_id,
                    tenant=tenant,
                    operation="capture",
                    connector=row.connector or "",  # capturable means authorized at a connector
                    amount=to_capture,
                )
                await idempotency.set_recovery_point(
                    conn, tenant=tenant, key=keyed.key, point=RECOVERY_ATTEMPT_CREATED, object_id=payment_id
                )
            return await self._capture(row, attempt_id, to_capture, caller)

        return await run_idempotent(self._pool, keyed, work)

    async def _capture(self, row: Any, attempt_id: str, amount: int, caller: Caller) -> Outcome:
        """Phases 2 and 3 of a capture (also a retry or the resolver sending it again, same attempt)."""
        connector = self._connectors[row.connector]
        try:
            result = await connector.capture(
                attempt_id=attempt_id,
                reference=row.connector_reference,
                amount=amount,
                currency=row.currency,
            )
        except ConnectorError as exc:
            decision = after_error(exc)
            if exc.outcome_known:  # nothing captured: the authorization still stands
                decision = Decision(
                    store.PaymentUpdate(Status.REQUIRES_CAPTURE), "failed", "payment.capture_failed", 0
                )
        else:
            decision = after_capture(result, amount=amount)
        async with self._pool.acquire() as conn, conn.transaction():
            return await self._settler.payment(
                conn, row.tenant, row.id, attempt_id, decision, caller=caller, action="payment.capture"
            )

    async def cancel(
        self, identity: Identity, payment_id: str, keyed: KeyedRequest, source: str | None
    ) -> Outcome:
        caller = Caller(identity, source, keyed)
        tenant = identity.tenant

        async def work(claim: Claimed) -> Outcome:
            if claim.object_id is not None:
                return await self._resume(tenant, payment_id, "void", caller)
            async with self._pool.acquire() as conn, conn.transaction():
                claimed = await store.claim_status(
                    conn,
                    tenant=tenant,
                    payment_id=payment_id,
                    allowed=sorted(CANCELABLE),
                    target="processing",
                )
                if claimed is None:
                    raise await self._why_not(conn, tenant, payment_id, "cancel")
                row, previous = claimed
                if row.connector_reference is None or row.connector is None:
                    # Nothing at a connector to release (a payment held by risk, or not yet
                    # authorized): canceled in the claim's transaction, so no crash can leave it
                    # processing without an attempt.
                    decision = Decision(
                        store.PaymentUpdate(Status.CANCELED), "succeeded", "payment.canceled", 0
                    )
                    return await self._settler.payment(
                        conn, tenant, payment_id, None, decision, caller=caller, action="payment.cancel"
                    )
                # Release the authorization (or close the wallet order) at the connector first.
                attempt_id = new_id("att")
                await store.insert_attempt(
                    conn,
                    attempt_id=attempt_id,
                    payment_id=payment_id,
                    tenant=tenant,
                    operation="void",
                    connector=row.connector,
                    amount=0,
                )
                await idempotency.set_recovery_point(
                    conn,
                    tenant=tenant,
                    key=keyed.key,
                    point=RECOVERY_ATTEMPT_CREATED,
                    object_id=payment_id,
                )
            return await self._void(row, attempt_id, caller, previous=previous)

        return await run_idempotent(self._pool, keyed, work)

    async def _void(self, row: Any, attempt_id: str, caller: Caller, *, previous: str | None) -> Outcome:
        """Phases 2 and 3 of a cancel (also sent again by a retry or the resolver, same attempt)."""
        tenant, payment_id = row.tenant, row.id
        try:
            result: ConnectorResult | None = await self._connectors[row.connector].void(
                attempt_id=attempt_id, reference=row.connector_reference
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
                return await self._settler.current(conn, tenant, payment_id, caller)
        if result is not None and result.outcome is ConnectorOutcome.SUCCEEDED:
            decision = Decision(store.PaymentUpdate(Status.CANCELED), "succeeded", "payment.canceled", 0)
            async with self._pool.acquire() as conn, conn.transaction():
                outcome = await self._settler.payment(
                    conn, tenant, payment_id, attempt_id, decision, caller=caller, action="payment.cancel"
                )
                # A wallet order closed unpaid can never be paid: its authorization attempt is over
                # (not polled on until its back-off runs out). A card's was settled long before.
                await store.end_authorizations(conn, payment_id=payment_id, status="failed")
                return outcome
        # The connector refused or was unreachable: nothing changed there, so undo our claim.
        back = previous or (Status.REQUIRES_CAPTURE if row.amount_authorized > 0 else Status.REQUIRES_ACTION)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.end_attempt(conn, attempt_id=attempt_id, status="failed")
            await store.claim_status(
                conn, tenant=tenant, payment_id=payment_id, allowed=["processing"], target=str(back)
            )
        if result is None and refusal is None:
            raise errors.Unavailable("The connector could not release the payment; retry.")
        reason = refusal.code if refusal is not None else (result and result.decline_code) or "refused"
        raise errors.Conflict(
            f"The processor refused to cancel this payment ({reason}).", code="payment_cancel_refused"
        )

    async def expire(self, attempt: store.Attempt) -> bool:
        """Terminal policy of an authorization still pending when its inquiry budget is spent (a bank
        transfer or a wallet order the payer never paid): cancel it at the connector, under the
        payment's own reference. The connector's confirmation proves no money moved; the payment
        ends ``canceled``. True when the payment is final (or no longer waits on this attempt).

        A connector that refuses (the payer paid meanwhile, or it cannot cancel) raises Conflict and
        the payment is as it was: the next status inquiry settles it, or the manual queue takes it.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            claimed = await store.claim_status(
                conn,
                tenant=attempt.tenant,
                payment_id=attempt.payment_id,
                allowed=[Status.PROCESSING, Status.REQUIRES_ACTION],
                target=Status.PROCESSING,
            )
            if claimed is None:
                return True
            row, previous = claimed
            void_id = new_id("att")
            await store.insert_attempt(
                conn,
                attempt_id=void_id,
                payment_id=row.id,
                tenant=row.tenant,
                operation="void",
                connector=attempt.connector,
                amount=0,
            )
        if row.connector_reference is None:
            row = dataclasses.replace(row, connector_reference=attempt.id)
        log.info("payment.expire", payment=row.id, attempt=attempt.id, age=round(attempt.age))
        await self._void(row, void_id, HUB, previous=previous)
        return True

    async def _resume(self, tenant: str, payment_id: str, operation: str, caller: Caller) -> Outcome:
        """A retried capture or cancel whose first run stopped after phase 1: send it again, same attempt."""
        async with self._pool.acquire() as conn:
            row = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
            attempt = await store.latest_attempt(conn, payment_id=payment_id, operation=operation)
        assert row is not None
        if attempt is None or attempt.status != "started":
            async with self._pool.acquire() as conn:
                return await self._settler.current(conn, tenant, payment_id, caller)
        return await self.send_again(row, attempt, caller)

    async def send_again(self, row: Any, attempt: Any, caller: Caller = HUB) -> Outcome:
        """Phase 2 of a capture or void recorded but never answered (a crash): same attempt id."""
        if attempt.operation == "capture":
            return await self._capture(row, attempt.id, attempt.amount, caller)
        return await self._void(row, attempt.id, caller, previous=None)

    async def _why_not(self, conn: Connection, tenant: str, payment_id: str, action: str) -> errors.ApiError:
        row = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
        if row is None:
            return errors.NotFound(f"No such payment: '{payment_id}'.", param="id")
        return errors.Conflict(
            f"You cannot {action} this payment because it has a status of {row.status}.",
            code="payment_unexpected_state",
        )

    # ---- definite answers that arrive later (callbacks, status inquiries) ------------------

    async def settle_attempt(
        self,
        connector: str,
        attempt_id: str,
        result: ConnectorResult,
        *,
        action: str = "payment.callback",
        caller: Caller = HUB,
    ) -> bool:
        """Apply a definite answer (callback or status inquiry) to an attempt still in flight.

        Idempotent against duplicate and out-of-order notices: the attempt row is locked and only
        a ``started``/``pending``/``unknown`` attempt changes; a settled one is left as it is, so the
        second of two identical callbacks, or a late "pending" after a "succeeded", changes nothing.
        An answer whose amount or currency is not the attempt's raises CallbackMismatch and changes
        nothing. Returns whether this call changed the payment.
        """
        if result.outcome is ConnectorOutcome.PENDING:
            return False
        async with self._pool.acquire() as conn, conn.transaction():
            attempt = await store.lock_answered_attempt(conn, attempt_id=attempt_id, connector=connector)
            if attempt is None or attempt.status not in IN_FLIGHT:
                return False
            why = _mismatch(result, amount=attempt.amount, currency=attempt.currency)
            if why is not None:
                log.error("payment.answer_mismatch", connector=connector, attempt=attempt_id, reason=why)
                raise CallbackMismatch(why)
            if attempt.operation == "capture":
                decision = after_capture(result, amount=attempt.amount)
            elif attempt.operation == "void":
                decision = after_void(result, authorized=attempt.amount_authorized > 0)
            elif attempt.operation == "authorize":
                decision = after_authorize(
                    result, amount=attempt.amount, capture=attempt.capture_method == "automatic"
                )
                if attempt.biller is not None:
                    # Money collected asynchronously for a bill is posted now, like a synchronous one.
                    decision = collected_for_bill(decision, current=Status(attempt.payment_status))
            else:
                return False
            if (
                result.outcome is ConnectorOutcome.REQUIRES_ACTION
                and attempt.payment_status == "requires_action"
            ):
                return False  # nothing new
            await self._settler.payment(
                conn,
                attempt.tenant,
                attempt.payment_id,
                attempt_id,
                decision,
                caller=caller,
                action=action,
            )
            if decision.update.status == Status.CANCELED:
                # As in _void: a closed order or cancelled transfer can never be paid, so its
                # authorization is over (not left in flight, or in the manual queue, for ever).
                await store.end_authorizations(conn, payment_id=attempt.payment_id, status="failed")
        if decision.post_bill and self.bills is not None:
            await self.bills.post(attempt.tenant, attempt.payment_id)
        return True


# ---- phase 1 in one statement ------------------------------------------------------------------

# Methods whose phase 1 can ride in the key's claim: a connector call built from the request alone.
AT_ONCE = frozenset({"card", "bank_transfer", "wallet", "prepaid"})


@dataclasses.dataclass(slots=True)
class AtOnce:
    """A create whose phase 1 rides in its key's claim (gateway/store/intake.py): the request, its
    ids, and what the statement recorded once it ran."""

    tenant: str
    params: schemas.CreatePaymentRequest
    keyed: KeyedRequest
    candidates: list[PaymentConnector]
    amount: int
    currency: str
    payment_id: str
    attempt_id: str
    facts: PaymentFacts | None  # the risk rules' view (None: risk screening is off)
    fingerprint: str | None = None  # a card's keyed HMAC (hex)
    pan: str | None = dataclasses.field(default=None, repr=False)
    prepared: PreparedMethod | None = None  # a method other than a card number, prepared before
    payment: store.NewPayment | None = None
    done: Intake | None = None

    def card(self, sealed: SealedCard) -> None:
        card = method_block(self.params.payment_method)
        assert isinstance(card, schemas.CardInput)
        assert card.number is not None
        self.pan, self.fingerprint = _digits(card.number), sealed.fingerprint.hex()
        if self.facts is not None:
            d = sealed.display
            self.facts = dataclasses.replace(self.facts, card_bin=d.bin, card_brand=d.brand)

    def recorded(self, claim: Claimed) -> bool:
        """Whether this claim is the intake's, which recorded the payment."""
        done = self.done
        return done is not None and done.payment is not None and claim.object_id == self.payment_id

    def prepared_method(self) -> PreparedMethod:
        if self.prepared is not None:
            return self.prepared
        assert self.done is not None
        assert self.done.card is not None
        assert self.pan is not None
        stored = self.done.card
        block = method_block(self.params.payment_method)
        assert isinstance(block, schemas.CardInput)
        d = stored.display
        data = CardData(self.pan, d.exp_month, d.exp_year, block.cvc, block.holder_name)
        display = _card_display(d, token=stored.token_id)
        return PreparedMethod(display, card=data, fingerprint=self.fingerprint)


def _held(screening: Screening | None) -> bool:
    """Whether the decision keeps the payment from its connector (step-up, review, block)."""
    return screening is not None and screening.decision.action is not Action.ALLOW


def _digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())


def _card_fields(card: schemas.CardInput) -> tuple[str, int, int]:
    """A card number's required fields (400 parameter_missing names the first one absent)."""
    if card.number is None or card.exp_month is None or card.exp_year is None:
        missing = next(f for f in ("number", "exp_month", "exp_year") if getattr(card, f) is None)
        raise errors.InvalidRequest(
            f"payment_method.card.{missing} is required.",
            code="parameter_missing",
            param=f"payment_method.card.{missing}",
        )
    return card.number, card.exp_month, card.exp_year


def _card_display(d: CardDisplay, *, token: str) -> dict[str, Any]:
    """What a card payment shows of its card (and stores as its payment_method)."""
    return {
        "type": "card",
        "card": {
            "brand": d.brand,
            "bin": d.bin,
            "last4": d.last4,
            "exp_month": d.exp_month,
            "exp_year": d.exp_year,
            "token": token,
        },
    }


def _new_payment(
    tenant: str,
    params: schemas.CreatePaymentRequest,
    *,
    payment_id: str,
    amount: int,
    currency: str,
    display: Mapping[str, Any],
    connector: str | None,
    risk: str | None,
    risk_keys: RiskKeys,
    destination: str | None = None,
    fx: FxLeg | None = None,
) -> store.NewPayment:
    """The payments row a create records (phase 1), from its request."""
    customer = params.customer
    return store.NewPayment(
        id=payment_id,
        tenant=tenant,
        amount=amount,
        currency=currency,
        method=params.payment_method.type,
        payment_method=orjson.dumps(display).decode(),
        capture_method=params.capture_method,
        customer_id=customer.id if customer else None,
        customer=_customer_json(customer),
        description=params.description,
        metadata=orjson.dumps(params.metadata).decode(),
        connector=connector,
        destination_account=destination,
        biller=params.bill.biller if params.bill else None,
        bill=_bill_json(params.bill, fx),
        risk=risk,
        risk_keys=risk_keys,
    )


def _payment_request(
    tenant: str,
    payment_id: str,
    attempt_id: str,
    params: schemas.CreatePaymentRequest,
    *,
    amount: int,
    currency: str,
    prepared: PreparedMethod,
) -> PaymentRequest:
    """What the connector is asked, for a first run and for a resumed one alike."""
    return PaymentRequest(
        attempt_id=attempt_id,
        payment_id=payment_id,
        tenant=tenant,
        amount=amount,
        currency=currency,
        method=params.payment_method.type,
        capture=params.capture_method == "automatic",
        card=prepared.card,
        details=prepared.details,
        customer=_customer_dict(params.customer),
        description=params.description,
    )


def _bill_json(bill: schemas.BillInput | None, fx: FxLeg | None) -> str | None:
    """The bill as posted; with ``fx``, the quote's snapshot: what the biller gets, in its currency."""
    if bill is None:
        return None
    data: dict[str, Any] = {
        "biller": bill.biller,
        "customer_params": bill.customer_params,
        "bill_ref": bill.bill_ref,
    }
    if fx is not None:
        data["fx"] = fx.as_json()
    return orjson.dumps(data).decode()


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


# ---- risk ----------------------------------------------------------------------------------------

# Methods whose connector call can wait for a step-up or a review: the hub can rebuild it from what
# it keeps (a card from its vault token; a bank account number or a wallet provider in
# held_details). A prepaid code is a bearer secret the hub does not keep, and a balance payment is
# decided at once, so for those a held decision refuses the payment instead.
HOLDABLE = frozenset({"card", "bank_transfer", "wallet"})

BLOCKED = refused("risk_blocked", "Blocked by risk rules.")


def _risk_json(screening: Screening | None) -> str | None:
    return orjson.dumps(screening.decision.as_json()).decode() if screening is not None else None


def _held_json(prepared: PreparedMethod) -> str | None:
    return orjson.dumps(dict(prepared.details)).decode() if prepared.details else None


def not_holdable(screening: Screening, method: str) -> Screening:
    """A challenge or review for a method that cannot be held becomes a block, with the reason."""
    decision = screening.decision
    if decision.action in (Action.ALLOW, Action.BLOCK):
        return screening
    reason = Reason(
        "not_holdable",
        f"A {method} payment cannot wait for a step-up or a review.",
        {"method": method, "decision": decision.action.label},
        0,
        Action.BLOCK.label,
    )
    blocked = dataclasses.replace(decision, action=Action.BLOCK, reasons=(*decision.reasons, reason))
    return dataclasses.replace(screening, decision=blocked)


def payment_facts(
    tenant: str,
    params: schemas.CreatePaymentRequest,
    *,
    amount: int,
    currency: str,
    prepared: PreparedMethod | None,
    risk: RiskService,
) -> PaymentFacts:
    """What the risk rules see of a create (the card's BIN and brand once it is prepared)."""
    customer = params.customer or schemas.CustomerInput()
    card = prepared.display.get("card") if prepared is not None else None
    msisdn = params.bill.customer_params.get("msisdn") if params.bill is not None else None
    return PaymentFacts(
        tenant=tenant,
        amount=amount,
        currency=currency,
        amount_usd=risk.amount_usd(amount, currency),
        method=params.payment_method.type,
        card_bin=card["bin"] if card else None,
        card_brand=card["brand"] if card else None,
        customer_id=customer.id,
        email=customer.email,
        phone=customer.phone,
        ip=customer.ip,
        device_id=customer.device_id,
        msisdn=msisdn,
        biller=params.bill.biller if params.bill is not None else None,
    )
