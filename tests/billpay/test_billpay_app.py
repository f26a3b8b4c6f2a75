"""The Bill Pay app's own security pieces, in process: password hashing, TOTP, sessions, CSRF, lockout.

These need no hub: the app is started without registering its webhook endpoint, and sign-up and
sign-in do not call the hub until the TOTP enrolment is finished.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pyotp
import pytest
from payhub_billpay import security
from payhub_billpay.app import SESSION_COOKIE, AppConfig, create_app
from payhub_billpay.money import format_money, parse_amount


def test_passwords_are_scrypt_hashed_and_salted() -> None:
    first, second = security.hash_password("correct horse"), security.hash_password("correct horse")
    assert first.startswith("scrypt$32768$8$1$") and first != second
    assert security.verify_password("correct horse", first)
    assert not security.verify_password("correct hors", first)
    assert not security.verify_password("x", "md5$abc")


def test_totp_codes_with_drift_and_their_step() -> None:
    secret = security.new_totp_secret()
    totp = pyotp.TOTP(secret)
    now = time.time()
    assert security.totp_step(secret, totp.at(now), now) == int(now // 30)
    assert security.totp_step(secret, totp.at(now - 30), now) == int(now // 30) - 1
    assert security.totp_step(secret, totp.at(now - 90), now) is None
    assert security.totp_step(secret, "12345", now) is None


def test_sessions_cannot_be_read_or_forged(tmp_path: Path) -> None:
    codec = security.SessionCodec.from_file(tmp_path / "k")
    value = codec.dumps({"user": "lilei", "stage": "full"})
    assert "lilei" not in value
    assert codec.loads(value) == {"user": "lilei", "stage": "full"}
    assert codec.loads(value[:-4] + "AAAA") is None
    assert security.SessionCodec.from_file(tmp_path / "other").loads(value) is None


def test_money() -> None:
    assert format_money(12850, "CNY") == "¥128.50 CNY"
    assert format_money(1200, "JPY") == "¥1,200 JPY"
    assert parse_amount("128.50", "CNY") == 12850
    assert parse_amount("1,000", "CNY") == 100000
    for bad in ("0", "-1", "1.005", "abc", "nan", "1e20"):
        assert parse_amount(bad, "CNY") is None, bad


@pytest.fixture
async def client(aiohttp_client: Any, payhub_home: Path, tmp_path: Path) -> Any:
    pki = payhub_home / "pki"
    config = AppConfig(
        hub_url="https://localhost:1",
        cert=pki / "clients" / "acme.pem",
        key=pki / "clients" / "acme.key",
        cacert=pki / "ca.pem",
        data_dir=tmp_path / "billpay",
        register_webhook=False,
    )
    return await aiohttp_client(create_app(config))


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match
    return match.group(1)


async def test_forms_need_the_csrf_token(client: Any) -> None:
    resp = await client.get("/signup")
    token = csrf_of(await resp.text())
    cookie = resp.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    form = {"username": "hanmeimei", "password": "long enough pw", "phone": "+8613800138000"}
    resp = await client.post("/signup", data=form, allow_redirects=False)
    assert resp.status == 403
    resp = await client.post("/signup", data={**form, "csrf_token": "forged"}, allow_redirects=False)
    assert resp.status == 403
    resp = await client.post("/signup", data={**form, "csrf_token": token}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/enroll"
    # A signed-up user who has not enrolled TOTP is not signed in.
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login"


async def test_five_failures_lock_the_account(client: Any) -> None:
    resp = await client.get("/signup")
    token = csrf_of(await resp.text())
    form = {
        "username": "wangxm",
        "password": "long enough pw",
        "phone": "+8613800138000",
        "csrf_token": token,
    }
    assert (await client.post("/signup", data=form, allow_redirects=False)).status == 303
    await client.post("/logout", data={"csrf_token": csrf_of(await (await client.get("/enroll")).text())})
    token = csrf_of(await (await client.get("/login")).text())
    for _ in range(5):
        resp = await client.post(
            "/login", data={"username": "wangxm", "password": "wrong", "csrf_token": token}
        )
        assert resp.status == 401
    resp = await client.post(
        "/login", data={"username": "wangxm", "password": "long enough pw", "csrf_token": token}
    )
    assert resp.status == 401
    assert "Too many failed attempts" in await resp.text()
