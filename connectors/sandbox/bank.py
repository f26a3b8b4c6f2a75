"""Bank simulator (DESIGN §3 port 9704, §8, §12): transfers settle later, by signed callback or status poll.

API (JSON over HTTP; fault knobs at ``POST /faults``)::

    POST /transfers                   {reference, account_number, amount, currency, callback_url}
                                      → 202 {transfer_id, reference, status: "pending", …}
                                      → 200 {…, status: "rejected", reason: "account_rejected"}
                                      → 200 the same transfer again when the reference is known
                                      → 409 {error: "duplicate_reference"} known reference, other details
    GET  /transfers/{ref}             → 200 the transfer (by our reference or the bank's transfer_id) · 404
    POST /transfers/{ref}/refund      {refund_reference, amount, currency} → 200 {refund_id, status, …}
                                      (de-duplicated on refund_reference; 409 not settled / too much)
    POST /simulate/settle/{ref}       settle now (the account's callback rule applies)
    POST /simulate/config             {"settle_after": seconds}

Test data, by the account number's last four digits (DESIGN §12):

    0002  rejected at once (``status: rejected``); no callback
    0005  settles after ``settle_after`` but never calls back: only a status poll finds out
    0009  settles and calls back TWICE with the same signed notice (duplicate-callback test data)
    else  settles after ``settle_after`` (1 s by default) and calls back once

The callback is ``POST <callback_url>`` with the raw JSON body ``{reference, status, transfer_id}`` and
``Bank-Signature: t=<unix>,v1=<HMAC-SHA256(secret, "<t>.<body>")>`` (crypto.signatures.sign_webhook),
signed with ``[connectors.bank_transfer] secret``. It is retried on failure (0.5 s, 1 s, 2 s), like a
bank would. The gateway's callback URL is HTTPS with mutual TLS: the simulator presents the client
certificate ``$PAYHUB_HOME/pki/clients/sandbox.pem``, issued from the payhub CA on first start.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import ssl
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

import aiohttp
import msgspec
from aiohttp import web

from config.settings import Settings
from connectors.sandbox.common import HttpSimulator, serve_app, simulator_app
from crypto.pki import PkiError, PkiPaths, issue_client
from crypto.signatures import sign_webhook
from gateway.logs import get_logger

log = get_logger("connectors.sandbox.bank")

SETTLE_AFTER: Final = 1.0
SIGNATURE_HEADER: Final = "Bank-Signature"
CONNECTOR: Final = "bank_transfer"  # whose [connectors.<name>] secret signs the callbacks
CLIENT_CERT_NAME: Final = "sandbox"
MAX_TRANSFERS: Final = 100_000  # oldest forgotten beyond this: a long load run must not grow forever
RETRY_DELAYS: Final = (0.5, 1.0, 2.0)
CALLBACK_TIMEOUT: Final = 5.0

REJECTED_SUFFIX: Final = "0002"
SILENT_SUFFIX: Final = "0005"
DUPLICATE_SUFFIX: Final = "0009"

Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
Reference = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Amount = Annotated[int, msgspec.Meta(gt=0, le=10**15)]


class TransferIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reference: Reference
    account_number: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4,34}$")]
    amount: Amount
    currency: Currency
    callback_url: Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=2048)]


class RefundIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    refund_reference: Reference
    amount: Amount
    currency: Currency


class ConfigIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    settle_after: Annotated[float, msgspec.Meta(ge=0)] | None = None


# ---- callbacks (shared with the e-wallet simulator) ---------------------------------------------


def client_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Trust the payhub CA and present the ``sandbox`` client certificate, issuing it if missing.

    None when there is no payhub CA yet (callbacks to an HTTPS gateway will then fail and be logged).
    """
    paths = PkiPaths(settings.pki_dir)
    if not paths.ca_cert.exists():
        log.warning("sandbox.no_pki", pki=str(paths.root))
        return None
    cert, key = paths.client_cert(CLIENT_CERT_NAME), paths.client_key(CLIENT_CERT_NAME)
    if not (cert.exists() and key.exists()):
        try:
            issue_client(paths, CLIENT_CERT_NAME, tenant="sandbox", role="client")
        except (PkiError, OSError) as exc:  # e.g. a CA certificate without its key: trust only
            log.warning("sandbox.client_cert_failed", error=str(exc))
    context = ssl.create_default_context(cafile=str(paths.ca_cert))
    if cert.exists() and key.exists():
        context.load_cert_chain(cert, key)
    return context


def bound_port(server: HttpSimulator, asked: int) -> int:
    """The port actually listened on: ``asked``, or the one the OS chose when asked for port 0."""
    if asked:
        return asked
    return int(server.runner.addresses[0][1])


def connector_secret(settings: Settings, connector: str) -> str | None:
    config = settings.connectors.get(connector)
    return config.secret if config is not None else None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One callback as sent, and what the receiver answered (``status`` None: no answer)."""

    url: str
    body: bytes
    status: int | None
    reply: bytes
    attempts: int


class CallbackSender:
    """Signs and POSTs callbacks, retrying failures; remembers the last deliveries for tests."""

    def __init__(
        self,
        settings: Settings,
        *,
        header: str,
        connector: str,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self._settings = settings
        self._header = header
        self._connector = connector
        self._secret = connector_secret(settings, connector)
        self.retry_delays = retry_delays
        self.deliveries: deque[Delivery] = deque(maxlen=1000)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._secret is None:
            log.warning("sandbox.callbacks_unsigned", connector=self._connector)
        context = client_ssl_context(self._settings)
        connector = aiohttp.TCPConnector(ssl=context) if context is not None else aiohttp.TCPConnector()
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def sign(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            headers[self._header] = sign_webhook(body, [self._secret])
        return headers

    async def send(self, url: str, payload: dict[str, Any]) -> Delivery:
        """Deliver once, retrying (with a fresh signature each time) until a 2xx or out of retries."""
        assert self._session is not None, "start() first"
        body = msgspec.json.encode(payload)
        status: int | None = None
        reply = b""
        attempts = 0
        for delay in (0.0, *self.retry_delays):
            if delay:
                await asyncio.sleep(delay)
            attempts += 1
            try:
                async with self._session.post(url, data=body, headers=self.sign(body)) as response:
                    status, reply = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, reply = None, str(exc).encode()
            if status is not None and 200 <= status < 300:
                break
            log.info("sandbox.callback_retry", url=url, status=status, attempt=attempts)
        delivery = Delivery(url, body, status, reply, attempts)
        self.deliveries.append(delivery)
        return delivery


# ---- the bank -----------------------------------------------------------------------------------


@dataclass
class Refund:
    refund_id: str
    refund_reference: str
    amount: int
    status: str = "succeeded"

    def view(self) -> dict[str, Any]:
        return {
            "refund_id": self.refund_id,
            "refund_reference": self.refund_reference,
            "amount": self.amount,
            "status": self.status,
        }


@dataclass
class Transfer:
    transfer_id: str
    reference: str
    account_number: str
    amount: int
    currency: str
    callback_url: str
    status: Literal["pending", "settled", "rejected"] = "pending"
    reason: str | None = None
    refunded: int = 0
    refunds: dict[str, Refund] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        return {
            "transfer_id": self.transfer_id,
            "reference": self.reference,
            "status": self.status,
            "reason": self.reason,
            "amount": self.amount,
            "currency": self.currency,
            "account_last4": self.account_number[-4:],
            "refunded": self.refunded,
        }

    def notice(self, status: str | None = None) -> dict[str, Any]:
        return {"reference": self.reference, "status": status or self.status, "transfer_id": self.transfer_id}

    def same_request(self, params: TransferIn) -> bool:
        return (params.account_number, params.amount, params.currency) == (
            self.account_number,
            self.amount,
            self.currency,
        )


def error_response(status: int, code: str, message: str = "") -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def decode_body(request: web.Request, model: type[Any]) -> Any:
    try:
        return msgspec.json.decode(await request.read(), type=model)
    except msgspec.DecodeError as exc:
        raise web.HTTPBadRequest(
            text=msgspec.json.encode({"error": "invalid_request", "message": str(exc)}).decode(),
            content_type="application/json",
        ) from exc


class BankSandbox:
    """The bank. ``settle_after`` (seconds, public) is read when a transfer is accepted; ``math.inf``
    keeps new transfers pending until ``POST /simulate/settle/{ref}`` or :meth:`settle`.
    ``port=0`` listens on a free port: read ``.port`` after :meth:`start`."""

    def __init__(
        self,
        settings: Settings,
        *,
        settle_after: float = SETTLE_AFTER,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        self.settle_after = settle_after
        self.host = host or settings.sandbox.host
        self.port = settings.sandbox.bank if port is None else port
        self.transfers: OrderedDict[str, Transfer] = OrderedDict()
        self._by_id: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.callbacks = CallbackSender(settings, header=SIGNATURE_HEADER, connector=CONNECTOR)
        self.app = simulator_app()
        self.app.router.add_post("/transfers", self._create)
        self.app.router.add_get("/transfers/{ref}", self._get)
        self.app.router.add_post("/transfers/{ref}/refund", self._refund)
        self.app.router.add_post("/simulate/settle/{ref}", self._simulate_settle)
        self.app.router.add_post("/simulate/config", self._config)
        self._server: HttpSimulator | None = None

    async def start(self) -> BankSandbox:
        await self.callbacks.start()
        self._server = await serve_app(self.app, self.host, self.port)
        self.port = bound_port(self._server, self.port)
        return self

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.close()
        await self.callbacks.close()

    def find(self, ref: str) -> Transfer | None:
        """By our reference or by the bank's transfer id."""
        transfer = self.transfers.get(ref)
        if transfer is None and (reference := self._by_id.get(ref)) is not None:
            transfer = self.transfers.get(reference)
        return transfer

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _remember(self, transfer: Transfer) -> None:
        self.transfers[transfer.reference] = transfer
        self._by_id[transfer.transfer_id] = transfer.reference
        while len(self.transfers) > MAX_TRANSFERS:
            _, oldest = self.transfers.popitem(last=False)
            self._by_id.pop(oldest.transfer_id, None)

    async def _create(self, request: web.Request) -> web.Response:
        params: TransferIn = await decode_body(request, TransferIn)
        known = self.transfers.get(params.reference)
        if known is not None:
            if not known.same_request(params):
                return error_response(409, "duplicate_reference", "reference names another transfer")
            return web.json_response(known.view(), status=202 if known.status == "pending" else 200)
        transfer = Transfer(
            transfer_id="trf_" + secrets.token_hex(10),
            reference=params.reference,
            account_number=params.account_number,
            amount=params.amount,
            currency=params.currency,
            callback_url=params.callback_url,
        )
        self._remember(transfer)
        if params.account_number.endswith(REJECTED_SUFFIX):
            transfer.status, transfer.reason = "rejected", "account_rejected"
            return web.json_response(transfer.view(), status=200)
        if math.isfinite(self.settle_after):
            self._spawn(self._settle_later(transfer, self.settle_after))
        return web.json_response(transfer.view(), status=202)

    async def _get(self, request: web.Request) -> web.Response:
        transfer = self.find(request.match_info["ref"])
        if transfer is None:
            return error_response(404, "transfer_not_found")
        return web.json_response(transfer.view())

    async def _refund(self, request: web.Request) -> web.Response:
        params: RefundIn = await decode_body(request, RefundIn)
        transfer = self.find(request.match_info["ref"])
        if transfer is None:
            return error_response(404, "transfer_not_found")
        known = transfer.refunds.get(params.refund_reference)
        if known is not None:
            if known.amount != params.amount:
                return error_response(409, "duplicate_reference", "refund_reference names another refund")
            return web.json_response(known.view())
        if params.currency != transfer.currency:
            return error_response(400, "currency_mismatch")
        if transfer.status != "settled":
            return error_response(409, "transfer_not_settled")
        if transfer.refunded + params.amount > transfer.amount:
            return error_response(409, "amount_exceeds_transfer")
        refund = Refund("rfd_" + secrets.token_hex(10), params.refund_reference, params.amount)
        transfer.refunds[params.refund_reference] = refund
        transfer.refunded += params.amount
        return web.json_response(refund.view())

    async def _simulate_settle(self, request: web.Request) -> web.Response:
        transfer = self.find(request.match_info["ref"])
        if transfer is None:
            return error_response(404, "transfer_not_found")
        if transfer.status == "rejected":
            return error_response(409, "transfer_rejected")
        self._spawn(self.settle(transfer))
        return web.json_response(transfer.view())

    async def _config(self, request: web.Request) -> web.Response:
        params: ConfigIn = await decode_body(request, ConfigIn)
        if params.settle_after is not None:
            self.settle_after = params.settle_after
        return web.json_response({"settle_after": self.settle_after})

    async def _settle_later(self, transfer: Transfer, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.settle(transfer)

    async def settle(self, transfer: Transfer) -> None:
        """Settle a pending transfer and call back according to the account's test-data rule."""
        if transfer.status != "pending":
            return
        transfer.status = "settled"
        account = transfer.account_number
        if account.endswith(SILENT_SUFFIX):
            return
        copies = 2 if account.endswith(DUPLICATE_SUFFIX) else 1
        for _ in range(copies):  # one after the other: the second is a true duplicate of a delivered one
            await self.callbacks.send(transfer.callback_url, transfer.notice())

    async def notify(self, ref: str, status: str | None = None) -> Delivery:
        """Send a signed notice about a transfer now, saying ``status`` (default: its current status).

        For tests of late and out-of-order notices, e.g. a "pending" after the "settled".
        """
        transfer = self.find(ref)
        if transfer is None:
            raise KeyError(ref)
        return await self.callbacks.send(transfer.callback_url, transfer.notice(status))


async def start(settings: Settings) -> BankSandbox:
    return await BankSandbox(settings).start()
