"""The telecom top-up connector (I/O): operator lookup, top-up, status, daily report.

Requests and answers are signed with HMAC-SHA256 under the secret shared with the aggregator
(``[connectors.telecom_topup] secret``; payhub.toml holds a dev value, production reads it from the
deployment's config). Answers are verified before anything in them is believed; for a top-up, an
answer that cannot be trusted raises ``OutcomeUnknown`` (settle with ``status``), since the top-up may
have been made. Top-ups cannot be reversed (``supports_reversal = False``): the terminal policy for a
top-up left pending is to keep asking ``status``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING

from config.settings import ConfigError, ConnectorSettings
from connectors.base import (
    Bill,
    BillerInfo,
    BillPayment,
    BillPosting,
    ConnectorUnavailable,
    InvalidParams,
    Outcome,
    OutcomeUnknown,
    SettlementLine,
    SignatureError,
)
from connectors.http import HttpReply, OutboundClient
from connectors.telecom_topup import transformers as wire

if TYPE_CHECKING:
    from connectors.registry import ConnectorDeps


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((value for key, value in headers.items() if key.lower() == lowered), None)


class TelecomTopupConnector:
    """BillerConnector for prepaid mobile top-ups through an aggregator (DESIGN §8)."""

    def __init__(
        self, name: str, config: ConnectorSettings, http: OutboundClient, *, endpoint: str, secret: bytes
    ) -> None:
        if not secret:
            raise ConfigError(f"connectors.{name}.secret is required (the aggregator's HMAC secret)")
        self.name = name
        self._config = config
        self._http = http
        self._endpoint = endpoint.rstrip("/")
        self._secret = secret

    @classmethod
    def create(cls, name: str, config: ConnectorSettings, deps: ConnectorDeps) -> TelecomTopupConnector:
        return cls(
            name,
            config,
            deps.http,
            endpoint=config.endpoint or deps.settings.sandbox.url("telecom"),
            secret=(config.secret or "").encode(),
        )

    async def describe(self) -> list[BillerInfo]:
        return list(wire.BILLERS.values())

    # -- plumbing

    async def _get(self, operation: str, target: str) -> HttpReply:
        headers = {wire.SIGNATURE_HEADER: wire.sign(self._secret, target.encode())}
        return await self._http.request(
            self.name,
            self._config,
            operation,
            "GET",
            self._endpoint + target,
            headers=headers,
            idempotent=True,
        )

    def _verify(self, reply: HttpReply) -> None:
        wire.verify(self._secret, reply.body, _header(reply.headers, wire.SIGNATURE_HEADER))

    def _refusal(self, reply: HttpReply, operation: str) -> Exception:
        """The error a signed 4xx answer to a read stands for."""
        code, message = wire.error_code(reply.body)
        return wire.topup_refusal(code, message) or ConnectorUnavailable(
            f"{self.name}: {operation} answered HTTP {reply.status} {code}"
        )

    # -- lookup and validation (called by the biller catalog before any money is collected)

    async def lookup(self, msisdn: str) -> wire.Operator:
        target = "/operators/lookup?" + urllib.parse.urlencode({"msisdn": msisdn})
        reply = await self._get("lookup", target)
        self._verify(reply)
        try:
            if reply.status == 200:
                return wire.operator_from_lookup(reply.body, msisdn)
            refusal = self._refusal(reply, "lookup")
        except wire.MalformedAnswer as exc:
            raise ConnectorUnavailable(f"{self.name}: {exc}") from exc
        raise refusal

    async def validate(self, biller: str, customer_params: Mapping[str, str], amount: int) -> dict[str, str]:
        """Normalised customer params, once the number has an operator that sells ``amount``."""
        info = wire.biller_for(biller)
        msisdn = wire.msisdn_of(info, customer_params)
        wire.check_amount(wire.Denominations(fixed=info.denominations), amount, info.currency)
        operator = await self.lookup(msisdn)
        wire.check_amount(operator.denominations, amount, info.currency)
        return {wire.MSISDN_PARAM: msisdn}

    # -- BillerConnector

    async def fetch_bills(self, biller: str, customer_params: Mapping[str, str]) -> list[Bill]:
        info = wire.biller_for(biller)
        raise InvalidParams(f"{info.id} has no bills to fetch: pay one of its denominations directly")

    async def pay(self, payment: BillPayment) -> BillPosting:
        info = wire.biller_for(payment.biller)
        msisdn = wire.msisdn_of(info, payment.customer_params)
        if payment.currency != info.currency:
            raise InvalidParams(f"{info.id} tops up in {info.currency}, not {payment.currency}")
        wire.check_amount(wire.Denominations(fixed=info.denominations), payment.amount, payment.currency)
        body = wire.topup_body(payment.attempt_id, msisdn, payment.amount, payment.currency)
        headers = {"Content-Type": "application/json", wire.SIGNATURE_HEADER: wire.sign(self._secret, body)}
        reply = await self._http.request(
            self.name, self._config, "topup", "POST", f"{self._endpoint}/topups", data=body, headers=headers
        )
        try:
            self._verify(reply)
            if reply.status in (200, 201):
                return wire.posting_from_topup(reply.body, payment.attempt_id)
            code, message = wire.error_code(reply.body)
        except (SignatureError, wire.MalformedAnswer) as exc:
            raise OutcomeUnknown(f"{self.name}: untrustworthy top-up answer: {exc}") from exc
        refusal = wire.topup_refusal(code, message)
        if refusal is not None:
            raise refusal
        return BillPosting(Outcome.PENDING, None, f"unknown_code:{code}", message or None)

    async def status(self, *, attempt_id: str, biller: str) -> BillPosting:
        wire.biller_for(biller)
        reply = await self._get("status", "/topups/" + urllib.parse.quote(attempt_id, safe=""))
        self._verify(reply)
        try:
            if reply.status == 200:
                return wire.posting_from_topup(reply.body, attempt_id)
            code, _ = wire.error_code(reply.body)
            if reply.status == 404 and code == "not_found":
                # Not received (yet): a top-up still in flight may land later.
                return BillPosting(Outcome.PENDING, None, "reference_not_found")
            refusal = self._refusal(reply, "status")
        except wire.MalformedAnswer as exc:
            raise ConnectorUnavailable(f"{self.name}: {exc}") from exc
        raise refusal

    async def reverse(self, *, attempt_id: str, biller: str) -> BillPosting:
        info = wire.biller_for(biller)
        raise InvalidParams(f"{info.id}: top-ups cannot be reversed (supports_reversal is false); ask status")

    async def settlement_report(self, biller: str, day: date) -> list[SettlementLine]:
        wire.biller_for(biller)
        reply = await self._get("report", f"/reports/{day.isoformat()}")
        self._verify(reply)
        try:
            if reply.status == 200:
                return wire.settlement_from_report(reply.body, day)
            refusal = self._refusal(reply, "report")
        except wire.MalformedAnswer as exc:
            raise ConnectorUnavailable(f"{self.name}: report for {day}: {exc}") from exc
        raise refusal
