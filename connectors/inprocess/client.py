"""The in-process connector. Deduplicates on attempt id exactly as a processor does."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Mapping

from config.settings import ConnectorSettings
from connectors.base import (
    CallbackNotice,
    ConnectorResult,
    InvalidParams,
    Outcome,
    PaymentRequest,
    SignatureError,
)
from connectors.inprocess.transformers import (
    PREPAID_CODE,
    PREPAID_VALUE_MAJOR,
    SLOW_CARD,
    SLOW_CARD_DELAY,
    bank_rejects,
    card_outcome,
)
from gateway.domain.money import exponent

# Asynchronous methods (bank transfer, wallet) settle this long after they were started.
SETTLE_AFTER = 1.0


class InProcessConnector:
    name = "inprocess"
    methods = frozenset({"card", "bank_transfer", "wallet", "prepaid"})

    def __init__(
        self, *, settle_after: float = SETTLE_AFTER, slow_card_delay: float = SLOW_CARD_DELAY
    ) -> None:
        # Public: tests pin asynchronous payments in flight by raising it.
        self.settle_after = settle_after
        self._slow_card_delay = slow_card_delay
        self._results: dict[str, ConnectorResult] = {}
        self._started: dict[str, float] = {}
        self._prepaid_spent: Counter[str] = Counter()
        # What a processor would have done: how many times each attempt moved money.
        self.charges: Counter[str] = Counter()

    @classmethod
    def create(cls, name: str, config: ConnectorSettings, deps: object) -> InProcessConnector:
        """Registry entry point; ``options.settle_after`` (seconds) tunes asynchronous settlement."""
        return cls(settle_after=float(config.options.get("settle_after", SETTLE_AFTER)))

    def _reference(self) -> str:
        return "ipc_" + secrets.token_hex(8)

    async def authorize(self, request: PaymentRequest) -> ConnectorResult:
        known = self._results.get(request.attempt_id)
        if known is not None:  # a retry of the same attempt: same answer, no second charge
            return known
        result = await self._decide(request)
        self._results[request.attempt_id] = result
        if result.outcome in (Outcome.SUCCEEDED, Outcome.PENDING, Outcome.REQUIRES_ACTION):
            self._started[request.attempt_id] = time.monotonic()
        if result.outcome is Outcome.SUCCEEDED:
            self.charges[request.attempt_id] += 1
        return result

    async def _decide(self, request: PaymentRequest) -> ConnectorResult:
        amount = request.amount
        if request.method == "card":
            if request.card is None:
                raise InvalidParams("card data missing")
            if request.card.number == SLOW_CARD:
                await asyncio.sleep(self._slow_card_delay)
            outcome = card_outcome(request.card.number)
            if outcome.outcome is not Outcome.SUCCEEDED:
                return outcome
            captured = amount if request.capture else 0
            return ConnectorResult(
                Outcome.SUCCEEDED, self._reference(), amount_authorized=amount, amount_captured=captured
            )
        if request.method == "bank_transfer":
            if bank_rejects(str(request.details.get("account_number", ""))):
                return ConnectorResult(
                    Outcome.FAILED, decline_code="bank_rejected", message="rejected by the bank"
                )
            return ConnectorResult(Outcome.PENDING, self._reference())
        if request.method == "wallet":
            reference = self._reference()
            action = {
                "type": "qr_code",
                "data": f"payhub://wallet/{request.details.get('provider')}/{reference}",
            }
            return ConnectorResult(Outcome.REQUIRES_ACTION, reference, next_action=action)
        if request.method == "prepaid":
            code = str(request.details.get("code", ""))
            if not PREPAID_CODE.match(code):
                raise InvalidParams("unknown prepaid code")
            value = PREPAID_VALUE_MAJOR * 10 ** exponent(request.currency)
            if self._prepaid_spent[code] + amount > value:
                return ConnectorResult(
                    Outcome.FAILED, decline_code="insufficient_funds", message="code exhausted"
                )
            self._prepaid_spent[code] += amount
            return ConnectorResult(
                Outcome.SUCCEEDED, self._reference(), amount_authorized=amount, amount_captured=amount
            )
        raise InvalidParams(f"method {request.method} not supported")

    async def capture(
        self, *, attempt_id: str, reference: str, amount: int, currency: str
    ) -> ConnectorResult:
        return self._once(attempt_id, ConnectorResult(Outcome.SUCCEEDED, reference, amount_captured=amount))

    async def void(self, *, attempt_id: str, reference: str) -> ConnectorResult:
        return self._once(attempt_id, ConnectorResult(Outcome.SUCCEEDED, reference))

    async def refund(self, *, attempt_id: str, reference: str, amount: int, currency: str) -> ConnectorResult:
        return self._once(attempt_id, ConnectorResult(Outcome.SUCCEEDED, "ipr_" + secrets.token_hex(8)))

    def _once(self, attempt_id: str, result: ConnectorResult) -> ConnectorResult:
        known = self._results.setdefault(attempt_id, result)
        if known is result:
            self.charges[attempt_id] += 1
        return known

    async def sync(self, *, attempt_id: str, operation: str) -> ConnectorResult:
        """Status inquiry: asynchronous methods settle ``settle_after`` seconds after they started."""
        known = self._results.get(attempt_id)
        if known is None:
            # Never reached us: a definite "nothing happened", which lets the core fail it safely.
            return ConnectorResult(
                Outcome.FAILED, decline_code="connector_unavailable", message="unknown attempt"
            )
        if known.outcome in (Outcome.PENDING, Outcome.REQUIRES_ACTION):
            started = self._started.get(attempt_id, 0.0)
            if time.monotonic() - started >= self.settle_after:
                settled = ConnectorResult(Outcome.SUCCEEDED, known.reference)
                self._results[attempt_id] = settled
                self.charges[attempt_id] += 1
                return settled
        return known

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> CallbackNotice:
        raise SignatureError("the in-process connector sends no callbacks")
