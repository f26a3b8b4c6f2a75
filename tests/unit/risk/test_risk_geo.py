"""risk.geo: the dev BIN and IP tables and phone regions."""

from __future__ import annotations

import pytest

from risk.geo import StaticIpCountries, bin_country, phone_country


@pytest.mark.parametrize(
    ("bin6", "country"),
    [
        ("411111", "US"),  # sandbox Visa
        ("555555", "US"),  # sandbox Mastercard
        ("621234", "CN"),  # sandbox UnionPay
        ("400000", "US"),  # sandbox decline cards
        ("622202", "CN"),  # UnionPay in general
        ("356600", "JP"),  # JCB
        ("22003000", "RU"),  # 8-digit BIN, Mir
        ("424242", None),  # Visa: brand says nothing about the country
        ("222100", None),  # Mastercard 2-series
        ("999999", None),  # unknown network
        ("", None),
        ("41x111", None),
        ("٤١١١١١", None),  # non-ASCII digits are not a BIN
    ],
)
def test_bin_country(bin6: str, country: str | None) -> None:
    assert bin_country(bin6) == country


@pytest.mark.parametrize(
    ("ip", "country"),
    [
        ("203.0.113.7", "CN"),
        ("198.51.100.66", "US"),
        ("192.0.2.255", "GB"),
        ("2001:db8::1", "DE"),
        ("::ffff:203.0.113.9", "CN"),  # IPv4-mapped IPv6 is the IPv4 address
        ("127.0.0.1", None),
        ("::1", None),
        ("10.1.2.3", None),
        ("203.0.114.1", None),
        ("not an ip", None),
        ("", None),
    ],
)
def test_dev_ip_countries(ip: str, country: str | None) -> None:
    assert StaticIpCountries().country(ip) == country


def test_longest_prefix_wins() -> None:
    table = StaticIpCountries([("10.0.0.0/8", "AA"), ("10.1.0.0/16", "BB"), ("10.1.2.0/24", None)])
    assert table.country("10.9.9.9") == "AA"
    assert table.country("10.1.9.9") == "BB"
    assert table.country("10.1.2.3") is None


def test_a_bad_table_entry_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="has host bits set"):
        StaticIpCountries([("10.0.0.1/8", "AA")])


@pytest.mark.parametrize(
    ("phone", "country"),
    [
        ("+8613800138000", "CN"),
        ("+14155552671", "US"),
        ("+442071838750", "GB"),
        ("+80012345678", None),  # international freephone: no region
        ("+999", None),
        ("8613800138000", None),  # not E.164
        ("garbage", None),
        ("", None),
    ],
)
def test_phone_country(phone: str, country: str | None) -> None:
    assert phone_country(phone) == country
