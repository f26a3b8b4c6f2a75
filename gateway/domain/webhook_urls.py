"""Which webhook URLs and addresses the hub may call (server-side request forgery rules). Pure.

A webhook URL is chosen by a tenant, and the hub POSTs to it from inside the operator's network,
so a URL must never reach what only the hub can reach: loopback, private and link-local ranges,
cloud metadata (169.254.169.254, fd00:ec2::254), carrier-grade NAT, multicast and the like.

Checked twice:

* :func:`check_url` when an endpoint is created: the scheme, the shape, and the host when it is an
  IP literal (a host name is not resolved here: what it resolves to may change);
* :func:`address_allowed` at delivery time, for every address the host name resolves to (the
  worker's resolver drops refused ones, so a name that later points inside — DNS rebinding —
  reaches nothing). IP literals are checked again by :func:`check_url` before each delivery.

Only ``https://`` is accepted, except ``http://`` to a loopback address (127.0.0.1, [::1],
localhost) when the server runs in ``dev_mode``: a developer's local receiver. In ``dev_mode``
loopback addresses are allowed for https too, and nothing else is.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import urlsplit

MAX_URL_LENGTH: Final = 2048
LOCALHOST_NAMES: Final = frozenset({"localhost", "localhost.localdomain"})
# Ranges that carry another address inside (NAT64, 6to4): judged by the address they carry.
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
# A host name label (letters, digits, hyphen; IDNs arrive punycoded or are refused).
_LABEL: Final = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# Final labels that resolvers read as an IPv4 number in a legacy form ("2130706433", "0x7f.1").
_NUMERIC_LABEL: Final = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeUrl(ValueError):
    """The URL may not be used for webhooks; the message says why (safe to show the caller)."""


def address_allowed(address: Address, *, allow_loopback: bool = False) -> bool:
    """Whether the hub may connect to ``address``: a public unicast address (loopback only when
    ``allow_loopback``)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return False  # a zone index only makes sense on a link
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_allowed(embedded, allow_loopback=allow_loopback)
        if address.teredo is not None or address in _NAT64_LOCAL:
            return False
    if address.is_loopback:
        return allow_loopback
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url: str, *, dev_mode: bool) -> str:
    """``url`` if the hub may deliver webhooks to it, else :class:`UnsafeUrl` saying why."""
    scheme, host = _parts(url)
    address = _literal(host)
    loopback = address.is_loopback if address is not None else host.lower() in LOCALHOST_NAMES
    if scheme == "http" and not (dev_mode and loopback):
        raise UnsafeUrl(
            "The URL must start with https:// (plain http is allowed only to 127.0.0.1 in development mode)."
        )
    if address is not None:
        if not address_allowed(address, allow_loopback=dev_mode):
            raise UnsafeUrl(f"The URL's address {address} is not a public address.")
    elif loopback:
        if not dev_mode:
            raise UnsafeUrl("The URL's host is not a public address.")
    else:
        _check_name(host)
    return url


def _parts(url: str) -> tuple[str, str]:
    """(scheme, host) of a well-formed http(s) URL without user info."""
    if not url or len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"The URL must be 1 to {MAX_URL_LENGTH} characters.")
    if not url.isascii() or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise UnsafeUrl("The URL must be printable ASCII without spaces (punycode an international name).")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise UnsafeUrl("The URL is not valid.") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UnsafeUrl("The URL must start with https://.")
    if "@" in parts.netloc:
        raise UnsafeUrl("The URL must not contain a user name or password.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeUrl("The URL must name a host.")
    if port == 0:
        raise UnsafeUrl("The URL's port must be 1 to 65535.")
    return scheme, host


def _check_name(host: str) -> None:
    labels = host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise UnsafeUrl("The URL's host is not a valid host name.")
    if _NUMERIC_LABEL.match(labels[-1]):
        raise UnsafeUrl("The URL's host is an IP address in an unusual form; write it as a.b.c.d.")
    if labels[-1].lower() in ("localhost", "local", "internal", "localdomain"):
        raise UnsafeUrl("The URL's host is not a public host name.")
