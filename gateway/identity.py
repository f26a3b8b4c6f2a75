"""Caller identity taken from the verified client certificate's SPIFFE ID (DESIGN §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from config.settings import Settings
from crypto.pki import parse_spiffe_id


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str
    role: str
    spiffe_id: str


class IdentityRejected(Exception):
    """The certificate is valid TLS-wise but names no usable tenant/role."""


def identity_from_peercert(peercert: dict[str, Any] | None, settings: Settings) -> Identity:
    """Pick the SPIFFE URI SAN out of ``SSLObject.getpeercert()`` and check it against config."""
    if not peercert:
        raise IdentityRejected("no client certificate")
    uris = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    parsed = [(uri, parse_spiffe_id(uri)) for uri in uris]
    valid = [(uri, ident) for uri, ident in parsed if ident is not None]
    if len(valid) != 1:
        raise IdentityRejected("certificate must carry exactly one payhub SPIFFE ID")
    uri, (tenant, role) = valid[0]
    tenant_settings = settings.tenants.get(tenant)
    if tenant_settings is None or not tenant_settings.enabled:
        raise IdentityRejected("tenant is unknown or disabled")
    if tenant_settings.role != role:
        raise IdentityRejected("certificate role does not match the tenant's role")
    return Identity(tenant=tenant, role=role, spiffe_id=uri)
