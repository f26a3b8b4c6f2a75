"""Client-side TLS helpers and an in-process gateway on ephemeral ports (real sockets, real mTLS)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from config.settings import Settings
from crypto.pki import PkiPaths
from gateway.server import RunningGateway, start_gateway


def client_context(
    pki: PkiPaths,
    name: str | None,
    *,
    max_version: ssl.TLSVersion | None = None,
    cert_pki: PkiPaths | None = None,
) -> ssl.SSLContext:
    """Trust the gateway's CA; present client ``name``'s certificate (from ``cert_pki`` if given)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    if name is not None:
        source = cert_pki or pki
        ctx.load_cert_chain(source.client_cert(name), source.client_key(name))
    if max_version is not None:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = max_version
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    return ctx


@asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(settings)
    try:
        yield running
    finally:
        await running.stop()


@asynccontextmanager
async def client(pki: PkiPaths, name: str, **kwargs: object) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_context(pki, name, **kwargs))  # type: ignore[arg-type]
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def hold_async_settlement(running: RunningGateway) -> None:
    """Keep wallet and bank-transfer payments in flight (requires_action / processing) for the test."""
    from connectors.inprocess import InProcessConnector
    from gateway.keys import CONNECTORS

    connector = running.api[CONNECTORS].payment["inprocess"]
    assert isinstance(connector, InProcessConnector)
    connector.settle_after = float("inf")
