"""Helpers for the traffic-protection tests: settings tweaks, raw TLS clients, metrics, Redis."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from config.settings import DEFAULT_CONFIG, Settings
from crypto.pki import PkiPaths
from tests.support.mtls import client_context

REDIS_URL = os.environ.get("PAYHUB_REDIS_URL")

_NO_REDIS = pytest.mark.skipif(not REDIS_URL, reason="needs a real Redis: set PAYHUB_REDIS_URL (see .ci/run)")

T = TypeVar("T")


def needs_redis(test: T) -> T:
    """Real Redis only: marked ``redis`` and skipped (reason shown) unless PAYHUB_REDIS_URL is set."""
    marked: T = pytest.mark.redis(_NO_REDIS(test))
    return marked


def unique_prefix() -> str:
    """A Redis key prefix of its own, so earlier or parallel runs never share a budget with this one."""
    return f"payhub-test:{uuid.uuid4().hex[:12]}"


def with_limits(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with ``[limits]`` fields replaced; nested tables given as dicts are merged."""
    limits = settings.limits
    for name, change in changes.items():
        current = getattr(limits, name)
        value = change
        if isinstance(change, dict) and isinstance(current, msgspec.Struct):
            value = msgspec.structs.replace(current, **change)
        limits = msgspec.structs.replace(limits, **{name: value})
    return msgspec.structs.replace(settings, limits=limits)


def config_with_limits(limits_toml: str, source: Path = DEFAULT_CONFIG) -> str:
    """The dev config text with its ``[limits…]`` tables replaced by ``limits_toml``."""
    kept: list[str] = []
    skipping = False
    for line in source.read_text().splitlines():
        header = re.match(r"^\[\[?([^\]]+)\]", line)
        if header:
            name = header.group(1).strip()
            skipping = name == "limits" or name.startswith("limits.")
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n\n" + limits_toml.strip() + "\n"


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def tls_open(pki: PkiPaths, name: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw mTLS connection as client ``name``, for hand-written (slow, partial, oversized) requests."""
    context: ssl.SSLContext = client_context(pki, name)
    return await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")


async def read_response(
    reader: asyncio.StreamReader, within: float = 10.0
) -> tuple[int, dict[str, str], Any]:
    """Read one HTTP/1.1 response (Content-Length bodies only) → (status, headers, JSON body)."""
    async with asyncio.timeout(within):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, orjson.loads(body) if body else None


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    """Poll ``check`` until it holds (generous deadline; no tight timing in these tests)."""
    deadline = time.monotonic() + within
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


def stalled_post(path: str, *, declared: int = 1000, sent: bytes = b'{"message": "') -> bytes:
    """The start of a POST whose body never completes: it stays in flight until body_timeout."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode() + sent
