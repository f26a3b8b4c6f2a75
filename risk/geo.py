"""Country of a card BIN, an IP address and a phone number, for the country-mismatch signal.

The BIN and IP tables shipped here are **dev/sandbox data**: they cover the sandbox test cards
(DESIGN §12) and the documentation address blocks (RFC 5737, RFC 3849) with a few network-level
entries, enough to exercise the rules end to end. Production plugs a licensed BIN file and a
GeoIP database in behind the same functions (``IpCountryLookup`` is the seam for IPs).

Every lookup answers ``None`` for "unknown" rather than raising: a missing country weakens one
signal, it must never fail a payment.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Protocol

import phonenumbers

# Prefix → ISO 3166 alpha-2 country; None = "known network, issued in many countries".
# Longest prefix wins, so issuer BINs override their network's default.
_BIN_COUNTRIES: dict[str, str | None] = {
    # sandbox test cards (DESIGN §12)
    "411111": "US",
    "400000": "US",
    "555555": "US",
    "621234": "CN",
    # networks issued (almost) only in one country
    "62": "CN",  # UnionPay
    "81": "CN",  # UnionPay (81xx range)
    "35": "JP",  # JCB
    "2200": "RU",  # Mir 2200-2204
    "2201": "RU",
    "2202": "RU",
    "2203": "RU",
    "2204": "RU",
    "6011": "US",  # Discover
    # global networks: the brand alone says nothing about the country
    "4": None,  # Visa
    "5": None,  # Mastercard 51-55
    "2": None,  # Mastercard 2221-2720
    "34": None,  # American Express
    "37": None,
    # a few issuer BINs (illustrative)
    "453997": "GB",
    "492181": "GB",
    "450875": "CA",
    "528919": "DE",
}
_BIN_MAX = max(map(len, _BIN_COUNTRIES))


def bin_country(bin6: str) -> str | None:
    """Issuing country of the card whose number starts with *bin6* (6 or 8 digits), if known."""
    if not bin6.isascii() or not bin6.isdigit():
        return None
    for length in range(min(len(bin6), _BIN_MAX), 0, -1):
        prefix = bin6[:length]
        if prefix in _BIN_COUNTRIES:
            return _BIN_COUNTRIES[prefix]
    return None


class IpCountryLookup(Protocol):
    """Where an IP address is; None when unknown, private, or not an address at all."""

    def country(self, ip: str) -> str | None: ...


DEV_IP_COUNTRIES: tuple[tuple[str, str | None], ...] = (
    ("203.0.113.0/24", "CN"),  # TEST-NET-3
    ("198.51.100.0/24", "US"),  # TEST-NET-2
    ("192.0.2.0/24", "GB"),  # TEST-NET-1
    ("2001:db8::/32", "DE"),  # IPv6 documentation
    ("127.0.0.0/8", None),  # loopback: no country, and no fallback to a shorter prefix
    ("::1/128", None),
)


class StaticIpCountries:
    """Longest-prefix match over a fixed list of (CIDR, country).

    Networks are parsed once; a lookup is one address parse plus a dict probe per distinct
    prefix length (a handful), which keeps it off the payment's latency budget.
    """

    def __init__(self, table: Iterable[tuple[str, str | None]] = DEV_IP_COUNTRIES) -> None:
        # version → {host bits: {network int >> host bits: country}}
        by_shift: dict[int, dict[int, dict[int, str | None]]] = {4: {}, 6: {}}
        for cidr, country in table:
            net = ipaddress.ip_network(cidr)
            shift = net.max_prefixlen - net.prefixlen
            by_shift[net.version].setdefault(shift, {})[int(net.network_address) >> shift] = country
        # Fewest host bits first: the longest prefix is probed first and wins.
        self._tables = {version: sorted(shifts.items()) for version, shifts in by_shift.items()}

    def country(self, ip: str) -> str | None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        value = int(address)
        for shift, nets in self._tables[address.version]:
            key = value >> shift
            if key in nets:
                return nets[key]
        return None


# Parsing costs ~10 µs and a customer pays from the same phone again and again.
@functools.lru_cache(maxsize=8192)
def phone_country(e164: str) -> str | None:
    """Region of an E.164 phone number (``+8613800138000`` → ``CN``); None when unparseable."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(number)
    # "ZZ" is phonenumbers' "unknown region"; "001" marks non-geographic numbers.
    if not region or region in ("ZZ", "001"):
        return None
    return str(region)
