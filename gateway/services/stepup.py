"""Step-up challenges (DESIGN §9): an OTP by SMS, or a signature by the customer's registered device.

A challenge is created in the transaction that holds the payment in ``requires_action``; the OTP
is sent after that commit (a payment never waits on an SMS gateway inside a transaction). An
answer is checked under the challenge's row lock, so two answers cannot both pass; a wrong one
is counted even though the request is refused (its transaction commits before the 400). The
``otp_max_tries``-th wrong answer locks the customer's step-up for ``otp_lockout`` seconds.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass
from typing import Any

from config.settings import RiskSettings
from connectors.base import ConnectorError
from connectors.messages.client import MessageSender
from crypto import stepup as secrets
from gateway.ids import new_id
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.store import risk as store
from gateway.store.types import Connection

log = get_logger("gateway.stepup")


class Verdict(enum.Enum):
    PASSED = "passed"
    WRONG = "wrong"  # counted; the challenge stays open
    LOCKED = "locked"  # this wrong answer used the last try: the customer is locked out
    EXPIRED = "expired"
    NO_CHALLENGE = "no_challenge"  # nothing open for this payment (answered already, or none)
    WRONG_KIND = "wrong_kind"  # an OTP for a device challenge or the reverse


@dataclass(frozen=True, slots=True)
class Answer:
    verdict: Verdict
    tries_left: int = 0


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """An OTP to send once the transaction that stored its digest has committed."""

    to: str
    body: str


@dataclass(frozen=True, slots=True)
class Issued:
    next_action: dict[str, Any]
    message: PendingMessage | None


def mask_phone(phone: str) -> str:
    """+8613800138000 → +86•••••8000: enough for the customer to recognise, not to reuse."""
    return phone[:3] + "•" * 5 + phone[-4:] if len(phone) > 7 else "•" * len(phone)


class StepUp:
    def __init__(
        self, settings: RiskSettings, otp_key: bytes, sender: MessageSender, metrics: Metrics
    ) -> None:
        self.settings = settings
        self._key = otp_key
        self._sender = sender
        self._metrics = metrics

    async def issue(
        self,
        conn: Connection,
        *,
        tenant: str,
        payment_id: str,
        amount: int,
        currency: str,
        customer_id: str | None,
        phone: str | None,
        device: store.Device | None,
    ) -> Issued | None:
        """Create the payment's challenge: the registered device if there is one, else an OTP to the
        phone; None when the customer can be reached neither way (the caller holds for review)."""
        challenge_id = new_id("chl")
        if device is not None:
            nonce = secrets.new_nonce()
            kind, secret, device_ref = "device_signature", nonce, device.id
            action: dict[str, Any] = {
                "type": "device_signature",
                "challenge": base64.b64encode(nonce).decode(),
                "device": device.device_id,
                "message": secrets.device_message(payment_id, amount, currency, nonce).decode(),
            }
            message = None
        elif phone:
            code = secrets.new_otp()
            kind, secret, device_ref = "otp", secrets.otp_digest(self._key, challenge_id, code), None
            action = {"type": "otp", "channel": "sms", "to": mask_phone(phone)}
            message = PendingMessage(phone, f"Your payhub code is {code}. It expires in 5 minutes.")
        else:
            return None
        await store.insert_challenge(
            conn,
            challenge_id=challenge_id,
            payment_id=payment_id,
            tenant=tenant,
            customer_id=customer_id,
            kind=kind,
            secret=secret,
            device=device_ref,
            ttl_seconds=self.settings.otp_ttl,
        )
        self._metrics.risk_challenges.labels(kind, "issued").inc()
        return Issued(action, message)

    async def deliver(self, message: PendingMessage | None) -> None:
        """Send a committed OTP. A failure is logged and counted: the customer asks again (a new
        payment) rather than the hub retrying an SMS it may already have sent."""
        if message is None:
            return
        try:
            await self._sender.send(message.to, "sms", message.body)
        except ConnectorError as exc:
            self._metrics.risk_challenges.labels("otp", "send_failed").inc()
            log.warning("stepup.otp_not_sent", error=type(exc).__name__)

    async def answer(
        self,
        conn: Connection,
        *,
        tenant: str,
        payment_id: str,
        amount: int,
        currency: str,
        otp: str | None,
        signature: str | None,
    ) -> Answer:
        """Check an answer inside the caller's transaction (it must commit even when WRONG)."""
        challenge = await store.open_challenge_for_update(conn, tenant=tenant, payment_id=payment_id)
        if challenge is None or challenge.status != "open":
            return Answer(Verdict.NO_CHALLENGE)
        if challenge.expired:
            await store.answer_challenge(conn, challenge_id=challenge.id, status="expired", wrong=False)
            self._metrics.risk_challenges.labels(challenge.kind, "expired").inc()
            return Answer(Verdict.EXPIRED)
        if (challenge.kind == "otp") != (otp is not None):
            return Answer(Verdict.WRONG_KIND)
        if challenge.kind == "otp":
            right = otp is not None and secrets.otp_matches(self._key, challenge.id, otp, challenge.secret)
        else:
            right = _signed(challenge, payment_id, amount, currency, signature)
        if right:
            await store.answer_challenge(conn, challenge_id=challenge.id, status="passed", wrong=False)
            self._metrics.risk_challenges.labels(challenge.kind, "passed").inc()
            return Answer(Verdict.PASSED)
        tries_left = self.settings.otp_max_tries - (challenge.tries + 1)
        if tries_left > 0:
            await store.answer_challenge(conn, challenge_id=challenge.id, status="open", wrong=True)
            self._metrics.risk_challenges.labels(challenge.kind, "wrong").inc()
            return Answer(Verdict.WRONG, tries_left)
        await store.answer_challenge(conn, challenge_id=challenge.id, status="failed", wrong=True)
        if challenge.customer_id is not None:
            await store.lock_out(
                conn, tenant=tenant, customer_id=challenge.customer_id, seconds=self.settings.otp_lockout
            )
        self._metrics.risk_challenges.labels(challenge.kind, "locked").inc()
        return Answer(Verdict.LOCKED)


def _signed(
    challenge: store.Challenge, payment_id: str, amount: int, currency: str, signature: str | None
) -> bool:
    if signature is None or challenge.public_key is None:
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    message = secrets.device_message(payment_id, amount, currency, challenge.secret)
    return secrets.signature_valid(challenge.public_key, raw, message)
