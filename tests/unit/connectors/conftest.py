"""Fixtures for the HTTP connector tests: the peers of tests/unit/connectors/peers.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.unit.connectors.peers import StubPeer, never_accepting, nothing_listening, stub_peer_running


@pytest.fixture
async def stub_peer() -> AsyncIterator[StubPeer]:
    async with stub_peer_running() as peer:
        yield peer


@pytest.fixture
def closed_port() -> int:
    return nothing_listening()


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    with never_accepting() as port:
        yield port
