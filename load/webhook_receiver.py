"""A webhook receiver as a tenant would run one: a real HTTP server on loopback, in its own thread and
event loop, that verifies every ``Payhub-Signature`` with its own code (plain ``hmac``, not the hub's)
and keeps its own book of what arrived. ``make bench --webhooks`` and the conservation checker
(tests/model) use it; ``fails`` makes it answer 500 to chosen attempts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

TOLERANCE = 300  # seconds, as DESIGN §6 tells receivers


@dataclass(frozen=True)
class Receipt:
    """One POST as the receiver saw it."""

    event_id: str
    event_type: str
    delivery: str
    attempt: int
    signed: bool  # a v1= signature under the endpoint's secret, timestamp within tolerance
    answered: int  # the status the receiver gave
    at: float  # time.time() when it arrived


def _valid(header: str, body: bytes, secret: str, now: float) -> bool:
    """Payhub-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>[,v1=…]."""
    parts = [item.partition("=") for item in header.split(",")]
    stamps = [value for key, _, value in parts if key == "t"]
    signatures = [value for key, _, value in parts if key == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or abs(now - int(stamps[0])) > TOLERANCE:
        return False
    expected = hmac.new(secret.encode(), stamps[0].encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


class WebhookReceiver:
    def __init__(self, fails: Callable[[str, int], bool] | None = None) -> None:
        self.secret = ""
        self._fails = fails
        self._receipts: list[Receipt] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._serve, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/payhub"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the webhook receiver did not start")
        return self

    def receipts(self) -> list[Receipt]:
        with self._lock:
            return list(self._receipts)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/payhub", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event: dict[str, Any] = orjson.loads(body)
            attempt = int(request.headers.get("Payhub-Attempt", "0"))
        except (orjson.JSONDecodeError, ValueError):
            return web.Response(status=400)
        signed = _valid(request.headers.get("Payhub-Signature", ""), body, self.secret, time.time())
        event_id = str(event.get("id"))
        status = 400 if not signed else 500 if self._fails and self._fails(event_id, attempt) else 200
        with self._lock:
            self._receipts.append(
                Receipt(
                    event_id,
                    str(event.get("type")),
                    request.headers.get("Payhub-Delivery", ""),
                    attempt,
                    signed,
                    status,
                    time.time(),
                )
            )
        return web.Response(status=status)
