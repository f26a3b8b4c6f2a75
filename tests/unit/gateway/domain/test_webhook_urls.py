"""Webhook URL rules (SSRF): https only, public addresses only, loopback http only in dev mode."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.domain.webhook_urls import MAX_URL_LENGTH, UnsafeUrl, address_allowed, check_url

ACCEPTED = [
    "https://example.com/hooks",
    "https://hooks.example.co.uk:8443/payhub?x=1",
    "https://93.184.216.34/hook",
    "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
    "https://example.com./trailing-dot",
]
REFUSED = [
    ("http://example.com/hook", "https://"),
    ("ftp://example.com/hook", "https://"),
    ("https://10.0.0.1/hook", "not a public address"),
    ("https://172.16.5.4/hook", "not a public address"),
    ("https://192.168.1.1/hook", "not a public address"),
    ("https://169.254.169.254/latest/meta-data", "not a public address"),
    ("https://[fd00:ec2::254]/", "not a public address"),
    ("https://[fe80::1]/", "not a public address"),
    ("https://100.64.0.1/", "not a public address"),
    ("https://0.0.0.0/", "not a public address"),
    ("https://[::]/", "not a public address"),
    ("https://224.0.0.1/", "not a public address"),
    ("https://255.255.255.255/", "not a public address"),
    ("https://240.0.0.1/", "not a public address"),
    ("https://[::ffff:10.0.0.1]/", "not a public address"),
    ("https://[::ffff:127.0.0.1]/", "not a public address"),
    ("https://[64:ff9b::a9fe:a9fe]/", "not a public address"),  # NAT64 of 169.254.169.254
    ("https://[2002:a00:1::]/", "not a public address"),  # 6to4 of 10.0.0.1
    ("https://127.0.0.1/", "not a public address"),
    ("https://localhost/", "not a public"),
    ("https://2130706433/", "unusual form"),
    ("https://0x7f.1/", "unusual form"),
    ("https://service.internal/", "not a public host name"),
    ("https://user:pass@example.com/", "user name or password"),
    ("https://user@example.com/", "user name or password"),
    ("https:///nohost", "name a host"),
    ("https://example.com:0/", "port"),
    ("https://example.com:99999/", "not valid"),
    ("https://exa mple.com/", "printable ASCII"),
    ("https://exämple.com/", "printable ASCII"),
    ("https://example.com/\x00", "printable ASCII"),
    ("https://under_score.example.com/", "valid host name"),
    ("", "1 to"),
    ("https://example.com/" + "a" * MAX_URL_LENGTH, "1 to"),
]
DEV_ONLY = [
    "http://127.0.0.1:8080/hook",
    "http://[::1]:8080/hook",
    "http://localhost:8080/hook",
    "https://127.0.0.1:8443/hook",
]


@pytest.mark.parametrize("url", ACCEPTED)
def test_public_https_urls_are_accepted(url: str) -> None:
    assert check_url(url, dev_mode=False) == url
    assert check_url(url, dev_mode=True) == url


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_unsafe_urls_are_refused_with_a_reason(url: str, why: str) -> None:
    with pytest.raises(UnsafeUrl, match=why):
        check_url(url, dev_mode=False)


@pytest.mark.parametrize("url", DEV_ONLY)
def test_loopback_only_in_dev_mode(url: str) -> None:
    assert check_url(url, dev_mode=True) == url
    with pytest.raises(UnsafeUrl):
        check_url(url, dev_mode=False)


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1/hook", "http://example.com/hook", "https://10.0.0.1/", "https://169.254.169.254/"],
)
def test_dev_mode_opens_loopback_and_nothing_else(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_url(url, dev_mode=True)


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("10.1.2.3", False),
        ("127.0.0.1", False),
        ("::1", False),
        ("169.254.169.254", False),
        ("fd00:ec2::254", False),
        ("100.127.255.254", False),
        ("198.18.0.1", False),  # benchmarking range
        ("192.0.2.1", False),  # documentation range
        ("::ffff:8.8.8.8", True),
        ("2001::1", False),  # Teredo
        ("ff02::1", False),
    ],
)
def test_address_rules(address: str, allowed: bool) -> None:
    assert address_allowed(ipaddress.ip_address(address)) is allowed


def test_loopback_address_allowed_only_on_request() -> None:
    assert address_allowed(ipaddress.ip_address("127.0.0.1"), allow_loopback=True)
    assert address_allowed(ipaddress.ip_address("::1"), allow_loopback=True)
    assert not address_allowed(ipaddress.ip_address("10.0.0.1"), allow_loopback=True)
