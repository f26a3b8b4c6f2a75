"""What one *operation* of each ``make bench`` scenario sends (docs/api.md, docs/billers.md).

An operation is what one latency sample measures. Each operation returns ``None`` when every
response was 2xx, else a short error kind (``"http 503"``); exceptions are counted by the caller.

* ``card``: ``POST /v1/payments`` with a fresh Idempotency-Key, a test card the sandbox acquirer
  approves and one of 1,000 customer ids. The only route of references A and B.
* ``balance``: a payment from a stored balance (``payment_method.type = balance``); the account is
  created and topped up with a large card top-up once, by :func:`setup`, before the load.
* ``bill``: ``POST /v1/bills/fetch`` for a ``bil_cn_power`` account, then ``POST /v1/payments``
  paying the bill it returned by card. Both round trips are one operation (one latency).
* ``history``: ``GET /v1/payments?limit=20&customer=cus_<n>``, the first page of one customer's
  payments, newest first.
* ``mix``: 70 % ``card``, 30 % ``history``, interleaved (three operations in every ten are reads).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp

from load.payments_loop import card_body

SCENARIOS: Final = ("card", "balance", "bill", "history", "mix")
CUSTOMERS: Final = 1000
BILLER: Final = "bil_cn_power"

Setup = Mapping[str, str]
Operation = Callable[[aiohttp.ClientSession, str, int, Setup], Awaitable[str | None]]


def _error(status: int) -> str | None:
    return None if 200 <= status < 300 else f"http {status}"


def _key() -> dict[str, str]:
    return {"Idempotency-Key": secrets.token_hex(12)}


async def card(session: aiohttp.ClientSession, base: str, n: int, _setup: Setup) -> str | None:
    async with session.post(f"{base}/v1/payments", json=card_body(n), headers=_key()) as resp:
        await resp.read()
        return _error(resp.status)


async def balance(session: aiohttp.ClientSession, base: str, n: int, setup: Setup) -> str | None:
    body = card_body(n)
    body["payment_method"] = {"type": "balance", "balance": {"account": setup["account"]}}
    body["amount"] = 100
    async with session.post(f"{base}/v1/payments", json=body, headers=_key()) as resp:
        await resp.read()
        return _error(resp.status)


def bill_account(n: int) -> str:
    """A 10-digit bil_cn_power account with dues: the sandbox has none for accounts ending 0000, and
    9999 / 7777 are its rejection and no-answer accounts; these end between 0001 and 6994."""
    return f"0031{(n % 999) * 7 + 1:06d}"


async def bill(session: aiohttp.ClientSession, base: str, n: int, _setup: Setup) -> str | None:
    params = {"account_number": bill_account(n)}
    fetch = {"biller": BILLER, "customer_params": params}
    async with session.post(f"{base}/v1/bills/fetch", json=fetch) as resp:
        found: Any = await resp.json(content_type=None)
        if resp.status != 200:
            return f"fetch http {resp.status}"
    due = found["data"][0]
    body = card_body(n)
    body["amount"] = due["amount_due"]
    body["currency"] = due["currency"]
    body["bill"] = {"biller": BILLER, "customer_params": params, "bill_ref": due["bill_ref"]}
    async with session.post(f"{base}/v1/payments", json=body, headers=_key()) as resp:
        await resp.read()
        return None if resp.status == 200 else f"pay http {resp.status}"


async def history(session: aiohttp.ClientSession, base: str, n: int, _setup: Setup) -> str | None:
    query = {"limit": "20", "customer": f"cus_{n % CUSTOMERS}"}
    async with session.get(f"{base}/v1/payments", params=query) as resp:
        await resp.read()
        return _error(resp.status)


async def mix(session: aiohttp.ClientSession, base: str, n: int, setup: Setup) -> str | None:
    if n % 10 in (2, 5, 8):
        return await history(session, base, n, setup)
    return await card(session, base, n, setup)


OPERATIONS: Final[dict[str, Operation]] = {
    "card": card,
    "balance": balance,
    "bill": bill,
    "history": history,
    "mix": mix,
}


async def setup(scenario: str, session: aiohttp.ClientSession, base: str) -> dict[str, str]:
    """Once before the load, against the gateway: what the operations need (an account for balance)."""
    if scenario != "balance":
        return {}
    async with session.post(f"{base}/v1/accounts", json={"currency": "CNY"}) as resp:
        created: Any = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"cannot create the balance account: {created}")
    account = str(created["id"])
    topup = {"amount": 99_999_999_999, "currency": "CNY", "payment_method": card_body(0)["payment_method"]}
    async with session.post(f"{base}/v1/accounts/{account}/topups", json=topup, headers=_key()) as resp:
        if resp.status != 200:
            raise RuntimeError(f"cannot top up the balance account: {await resp.text()}")
    return {"account": account}
