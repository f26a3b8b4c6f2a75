"""The per-connection part (certificate → Peer) and the per-request checks (revocation, tenant)."""

from __future__ import annotations

from typing import Any

import pytest

from config.settings import TenantSettings
from gateway.identity import (
    Identity,
    IdentityRejected,
    check_not_revoked,
    check_tenant,
    peer_from_peercert,
)

ACME = "spiffe://payhub.local/tenant/acme/role/client"
TENANTS = {
    "acme": TenantSettings(role="client"),
    "ops": TenantSettings(role="operator"),
    "off": TenantSettings(role="client", enabled=False),
}


def cert(*uris: str, serial: str = "0A1B") -> dict[str, Any]:
    return {"serialNumber": serial, "subjectAltName": tuple(("URI", uri) for uri in uris)}


def test_a_certificate_with_one_spiffe_id_is_its_identity_and_serial() -> None:
    peer = peer_from_peercert(cert(ACME, "https://example.com/other"))
    assert peer.serial == 0x0A1B
    assert peer.identity == Identity("acme", "client", ACME)
    assert check_tenant(peer, TENANTS) is peer.identity


@pytest.mark.parametrize(
    ("peercert", "why"),
    [
        (None, "no client certificate"),
        (cert(), "exactly one"),
        (cert(ACME, "spiffe://payhub.local/tenant/ops/role/operator"), "exactly one"),
        (cert(ACME + "\n"), "exactly one"),
        (cert("spiffe://payhub.local/tenant/initech/role/client"), "unknown or disabled"),
        (cert("spiffe://payhub.local/tenant/off/role/client"), "unknown or disabled"),
        (cert("spiffe://payhub.local/tenant/ops/role/client"), "role does not match"),
    ],
)
def test_refused_identities(peercert: dict[str, Any] | None, why: str) -> None:
    with pytest.raises(IdentityRejected, match=why):
        check_tenant(peer_from_peercert(peercert), TENANTS)


def test_a_revoked_serial_is_refused_and_others_pass() -> None:
    peer = peer_from_peercert(cert(ACME, serial="FF"))
    check_not_revoked(peer, frozenset({1, 2}))
    with pytest.raises(IdentityRejected, match="revoked"):
        check_not_revoked(peer, frozenset({0xFF}))
