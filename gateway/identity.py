"""Caller identity taken from the verified client certificate's SPIFFE ID (DESIGN §5).

A connection's certificate never changes, so it is parsed once per connection (:func:`peer_of`,
cached by the connection's ``SSLObject``). What can change under an open connection — the CRL and
the tenant table — is checked on every request: a set lookup and a dict lookup.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from config.settings import TenantSettings
from crypto.pki import parse_spiffe_id


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str
    role: str
    spiffe_id: str


class IdentityRejected(Exception):
    """The certificate is valid TLS-wise but names no usable tenant/role, or was revoked since."""


@dataclass(frozen=True, slots=True)
class Peer:
    """What one connection's certificate says: its serial, and its identity or why it has none."""

    serial: int | None
    identity: Identity | None
    problem: str = ""


_NO_CERTIFICATE = Peer(serial=None, identity=None, problem="no client certificate")

# Entries go away with their connection's SSLObject (transports and aiohttp's protocol objects
# take no weak references; the SSLObject does and lives exactly as long as the connection).
_PEERS: WeakKeyDictionary[ssl.SSLObject, Peer] = WeakKeyDictionary()


def peer_from_peercert(peercert: Mapping[str, Any] | None) -> Peer:
    """Parse ``SSLObject.getpeercert()``: the serial and the one payhub SPIFFE URI SAN."""
    if not peercert:
        return _NO_CERTIFICATE
    serial_hex = peercert.get("serialNumber")
    serial = int(serial_hex, 16) if isinstance(serial_hex, str) else None
    uris = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    valid = [(uri, ident) for uri in uris if (ident := parse_spiffe_id(uri)) is not None]
    if len(valid) != 1:
        return Peer(serial, None, "certificate must carry exactly one payhub SPIFFE ID")
    uri, (tenant, role) = valid[0]
    return Peer(serial, Identity(tenant=tenant, role=role, spiffe_id=uri))


def peer_of(transport: asyncio.BaseTransport | None) -> Peer:
    """The connection's parsed certificate, computed on its first request and cached."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject):
        return _NO_CERTIFICATE
    peer = _PEERS.get(ssl_object)
    if peer is None:
        peer = _PEERS[ssl_object] = peer_from_peercert(ssl_object.getpeercert())
    return peer


def check_not_revoked(peer: Peer, revoked: frozenset[int]) -> None:
    if peer.serial in revoked:
        raise IdentityRejected("certificate is revoked")


def check_tenant(peer: Peer, tenants: Mapping[str, TenantSettings]) -> Identity:
    """The peer's identity if its tenant exists, is enabled and has the certificate's role."""
    identity = peer.identity
    if identity is None:
        raise IdentityRejected(peer.problem)
    tenant = tenants.get(identity.tenant)
    if tenant is None or not tenant.enabled:
        raise IdentityRejected("tenant is unknown or disabled")
    if tenant.role != identity.role:
        raise IdentityRejected("certificate role does not match the tenant's role")
    return identity
