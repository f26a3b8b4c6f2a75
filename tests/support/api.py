"""A small client for payhub's API in tests: JSON in and out over real mTLS."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from crypto.pki import PkiPaths
from tests.support.mtls import client_context


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]
    raw: bytes


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def request(
        self, method: str, path: str, body: Any = None, *, key: str | None = None, params: Any = None
    ) -> Reply:
        headers = {"Idempotency-Key": key} if key is not None else {}
        async with self.session.request(
            method, self.base + path, json=body, headers=headers, params=params
        ) as r:
            raw = await r.read()
            parsed = await r.json(content_type=None) if raw else None
            return Reply(r.status, parsed, dict(r.headers), raw)

    async def get(self, path: str, **params: Any) -> Reply:
        return await self.request("GET", path, params=params or None)

    async def post(self, path: str, body: Any = None, *, key: str | None = "auto") -> Reply:
        if key == "auto":
            key = "test-" + secrets.token_hex(8)
        return await self.request("POST", path, body if body is not None else {}, key=key)


@asynccontextmanager
async def api_client(pki: PkiPaths, name: str, port: int, *, limit: int = 100) -> AsyncIterator[Api]:
    connector = aiohttp.TCPConnector(ssl=client_context(pki, name), limit=limit)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield Api(session, f"https://localhost:{port}")


def card_payment(number: str = "4111111111111111", amount: int = 12850, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "amount": amount,
        "currency": "CNY",
        "payment_method": {
            "type": "card",
            "card": {
                "number": number,
                "exp_month": 12,
                "exp_year": 2030,
                "cvc": "123",
                "holder_name": "Li Lei",
            },
        },
        "customer": {"id": "cus_42", "email": "li@example.com", "ip": "203.0.113.7"},
        "description": "June electricity",
    }
    body.update(extra)
    return body
