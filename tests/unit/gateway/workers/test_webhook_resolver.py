"""The webhook worker's resolver keeps only addresses the hub may connect to (DNS rebinding)."""

from __future__ import annotations

import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.workers.webhooks import SafeResolver


class FixedResolver(AbstractResolver):
    """Answers every name with the given addresses, as a rebinding DNS server would."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        self.closed = True


async def test_private_answers_are_dropped_and_public_ones_kept() -> None:
    inner = FixedResolver("10.0.0.7", "93.184.216.34", "169.254.169.254", "2606:2800:220:1::1")
    resolver = SafeResolver(allow_loopback=False, inner=inner)
    results = await resolver.resolve("hooks.example.com", 443)
    assert [r["host"] for r in results] == ["93.184.216.34", "2606:2800:220:1::1"]
    await resolver.close()
    assert inner.closed


@pytest.mark.parametrize("addresses", [("127.0.0.1",), ("10.0.0.1", "192.168.0.1"), ("fd00:ec2::254",), ()])
async def test_a_name_with_no_public_address_fails_to_resolve(addresses: tuple[str, ...]) -> None:
    resolver = SafeResolver(allow_loopback=False, inner=FixedResolver(*addresses))
    with pytest.raises(OSError, match="no address webhooks may be sent to"):
        await resolver.resolve("rebound.example.com", 443)


async def test_loopback_only_in_dev_mode() -> None:
    resolver = SafeResolver(allow_loopback=True, inner=FixedResolver("127.0.0.1", "10.0.0.1"))
    assert [r["host"] for r in await resolver.resolve("localhost", 80)] == ["127.0.0.1"]
