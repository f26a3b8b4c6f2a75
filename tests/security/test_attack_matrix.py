"""The attack matrix: each class of attack, tried case by case against a real gateway (real mTLS
sockets, real PostgreSQL; a real ``payhub serve`` for config reload). One test per class; each fails
listing the cases not refused, and tests/security/conftest.py prints ``class | tried | refused``.

A case is refused when the gateway answers the expected 4xx in DESIGN's error shape (or refuses the
TLS handshake) and changes nothing; no answer may be a 5xx or carry a traceback or a PAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import json
import secrets
import signal
import ssl
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from config.settings import ConnectorSettings, SandboxSettings, Settings
from connectors.sandbox.bank import BankSandbox
from crypto.pki import PkiPaths, init_pki, issue_client, revoke_client, spiffe_id
from crypto.signatures import sign_webhook
from gateway.api.routes import OPERATOR, ROUTES
from gateway.keys import DB_POOL
from gateway.server import RunningGateway
from tests.e2e.test_bola import NOBODY, NOT_TENANT_OBJECTS, PROBES, SMUGGLED, normalized, snapshot
from tests.security.matrix import (
    MATRIX,
    PANS,
    Issuer,
    acme_objects,
    as_path,
    call,
    changed,
    client_speaks,
    deep,
    deep_object,
    describe,
    fingerprint,
    handshake_refused,
    mint,
    ok,
    path_quote,
    placeholder,
    refusal,
    screen,
    succeeded,
    topup_body,
    write_text,
)
from tests.support.api import Api, Reply, api_client, card_payment
from tests.support.mtls import client, client_context, gateway
from tests.support.processes import REPO, free_port, payhub_env, start_payhub, wait_ready
from tests.support.traffic import read_response, stalled_post, tls_open, with_limits

DAY = dt.timedelta(days=1)


def new_key() -> str:
    return "matrix-" + secrets.token_hex(8)


def operator_routes(gw: RunningGateway) -> set[tuple[str, str]]:
    """Routes only an operator certificate may use: their input is probed with one."""
    table = gw.api[ROUTES]
    return {
        (route.method, route.resource.canonical)
        for route in gw.api.router.routes()
        if route.resource is not None and table.roles(route) == OPERATOR
    }


def routes_with_ids(gw: RunningGateway) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in gw.api.router.routes()
        if route.resource is not None and "{" in route.resource.canonical
    }


def setting(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``body`` with the dotted ``path`` set to ``value``."""
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    inner = body
    for part in parents:
        inner = inner.setdefault(part, {})
    inner[last] = value
    return body


# ------------------------------------------------------------------------------------------- mTLS


async def test_mtls(gw: RunningGateway, pki: PkiPaths, acme: Api, ops: Api, tmp_path: Path) -> None:
    attack = MATRIX.attack("mTLS")
    port = gw.api_port
    url = f"https://localhost:{port}/v1/ping"
    assert (await ops.get("/v1/ping")).status == 200  # controls: the certificates used below work
    assert (await acme.get("/v1/ping")).status == 200

    minted, other = PkiPaths(tmp_path / "minted"), PkiPaths(tmp_path / "other-ca")
    init_pki(other, {"acme": "client"})
    real, acme_uri = Issuer.of(pki), spiffe_id("acme", "client")
    mint(minted, "expired", uris=[acme_uri], issuer=real, valid=(-10 * DAY, -DAY))
    mint(minted, "not-yet-valid", uris=[acme_uri], issuer=real, valid=(DAY, 10 * DAY))
    mint(minted, "impostor-ca", uris=[acme_uri], issuer=Issuer.impostor(real.cert))
    mint(minted, "self-signed", uris=[acme_uri], issuer=None)
    mint(minted, "no-spiffe-id", uris=[], issuer=real)
    mint(minted, "two-spiffe-ids", uris=[acme_uri, spiffe_id("ops", "operator")], issuer=real)
    mint(minted, "other-trust-domain", uris=["spiffe://evil.example/tenant/acme/role/client"], issuer=real)
    issue_client(pki, "matrix-umbrella", tenant="umbrella", role="client")
    issue_client(pki, "matrix-acme-operator", tenant="acme", role="operator")
    issue_client(pki, "matrix-revoked", tenant="acme", role="client")
    issue_client(pki, "matrix-keepalive", tenant="acme", role="client")
    server_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)

    refused_at_handshake = {
        "no client certificate": client_context(pki, None),
        "certificate from another CA": client_context(pki, "acme", cert_pki=other),
        "CA impostor (the payhub CA's name, another key)": client_context(
            pki, "impostor-ca", cert_pki=minted
        ),
        "self-signed certificate": client_context(pki, "self-signed", cert_pki=minted),
        "expired certificate": client_context(pki, "expired", cert_pki=minted),
        "not yet valid certificate": client_context(pki, "not-yet-valid", cert_pki=minted),
        "the gateway's own server certificate": server_ctx,
        # Valid TLS-wise; the identity is what is wrong (403 authentication_error, or a refused handshake).
        "unknown tenant": client_context(pki, "matrix-umbrella"),
        "a role the tenant does not have": client_context(pki, "matrix-acme-operator"),
        "no SPIFFE ID": client_context(pki, "no-spiffe-id", cert_pki=minted),
        "two SPIFFE IDs": client_context(pki, "two-spiffe-ids", cert_pki=minted),
        "SPIFFE ID of another trust domain": client_context(pki, "other-trust-domain", cert_pki=minted),
    }
    for what, ctx in refused_at_handshake.items():
        with attack.case(what) as problems:
            problems.extend(await handshake_refused(url, ctx))

    for version, label in ((ssl.TLSVersion.TLSv1, "TLS 1.0"), (ssl.TLSVersion.TLSv1_1, "TLS 1.1")):
        with attack.case(label) as problems, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = client_context(pki, "acme", max_version=version)
            if not await client_speaks(version, pki, ctx):
                problems.append(f"this client cannot offer {label}: the probe proves nothing")
            problems.extend(await handshake_refused(url, ctx, or_403=False))

    # Revocation: one certificate revoked before it connects, one while its connection is open.
    reader, writer = await tls_open(pki, "matrix-keepalive", port)
    try:
        writer.write(b"GET /v1/ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        revoke_client(pki, "matrix-revoked")
        revoke_client(pki, "matrix-keepalive")
        with attack.case("revoked before connecting") as problems:
            deadline = time.monotonic() + 5  # DESIGN §3: a running server picks a new CRL up within 5 s
            while accepted := await handshake_refused(url, client_context(pki, "matrix-revoked")):
                if time.monotonic() > deadline:
                    problems.extend(["still accepted 5 s after the CRL changed", *accepted])
                    break
                await asyncio.sleep(0.1)
        with attack.case("revoked during an open keep-alive connection") as problems:
            writer.write(b"GET /v1/ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, headers, body = await read_response(reader, within=5)
            problems.extend(
                refusal(Reply(status, body, headers, orjson.dumps(body)), 403, "authentication_error")
            )
            try:
                left_open = await asyncio.wait_for(reader.read(), 3) != b""
            except TimeoutError:
                left_open = True
            except (ConnectionError, ssl.SSLError):
                left_open = False
            if left_open:
                problems.append("the connection was left open")
    finally:
        writer.close()

    # Operator certificates on routes that move money or hold customer data: 403 permission_error.
    captured = ok(await acme.post("/v1/payments", card_payment()))["id"]
    manual = ok(await acme.post("/v1/payments", card_payment(capture_method="manual")))["id"]
    account = ok(await acme.post("/v1/accounts", {"currency": "CNY", "customer": "cus_role"}))["id"]
    card = {"number": PANS[1], "exp_month": 3, "exp_year": 2031}
    bill = {"biller": "bil_cn_power", "customer_params": {"account_number": "0031234567"}}
    operator_on: list[tuple[str, str, Any]] = [
        ("POST", "/v1/payments", card_payment()),
        ("GET", "/v1/payments", None),
        ("GET", f"/v1/payments/{captured}", None),
        ("POST", f"/v1/payments/{manual}/capture", {}),
        ("POST", f"/v1/payments/{manual}/cancel", {}),
        ("POST", "/v1/refunds", {"payment": captured, "amount": 100}),
        ("POST", "/v1/tokens", {"card": card}),
        ("POST", "/v1/accounts", {"currency": "CNY", "customer": "cus_ops"}),
        ("GET", f"/v1/accounts/{account}", None),
        ("GET", f"/v1/accounts/{account}/entries", None),
        ("POST", f"/v1/accounts/{account}/topups", topup_body()),
        ("POST", "/v1/bills/fetch", bill),
    ]
    pool = gw.api[DB_POOL]
    for method, path, body in operator_on:
        route = path.replace(captured, "{id}").replace(manual, "{id}").replace(account, "{id}")
        with attack.case(f"operator certificate on {method} {route}") as problems:
            before = await fingerprint(pool)
            reply = await call(ops, method, path, body, key=new_key() if method == "POST" else None)
            problems.extend(refusal(reply, 403, "permission_error"))
            problems.extend(changed(before, await fingerprint(pool)))
    attack.verdict()


async def test_mtls_tenant_disabled_by_config_reload(
    payhub_home: Path, db_url: str, pki: PkiPaths, tmp_path: Path
) -> None:
    """Needs ``payhub serve`` to re-read the config file on SIGHUP (DESIGN §5: a tenant disabled by a
    config reload stops working at once, on connections already open too)."""
    attack = MATRIX.attack("mTLS")
    issue_client(pki, "matrix-initech", tenant="initech", role="client")
    config = tmp_path / "payhub.toml"
    text = (REPO / "config" / "payhub.toml").read_text()
    text += '\n[tenants.initech]\nrole = "client"\nenabled = false\n'
    write_text(config, text)
    api_port, ops_port = free_port(), free_port()
    env = payhub_env(
        PAYHUB_HOME=str(payhub_home),
        PAYHUB_DATABASE_URL=db_url,
        PAYHUB_LISTEN=f"127.0.0.1:{api_port}",
        PAYHUB_OPS_LISTEN=f"127.0.0.1:{ops_port}",
        PAYHUB_CONFIG=str(config),
    )
    process = start_payhub("serve", env=env, stdout=tmp_path / "serve.log")
    try:
        await wait_ready(ops_port)
        with attack.case("tenant disabled in config") as problems:
            async with api_client(pki, "matrix-initech", api_port) as initech:
                problems.extend(refusal(await initech.get("/v1/ping"), 403, "authentication_error"))
        async with api_client(pki, "globex", api_port, limit=1) as globex:
            assert (await globex.get("/v1/ping")).status == 200  # control, and the connection stays open
            write_text(config, text.replace("[tenants.globex]\n", "[tenants.globex]\nenabled = false\n", 1))
            process.send_signal(signal.SIGHUP)
            with attack.case("tenant disabled by config reload (SIGHUP), open connection") as problems:
                for _ in range(50):  # a signal is handled asynchronously: 5 s at most
                    if (reply := await globex.get("/v1/ping")).status != 200:
                        break
                    await asyncio.sleep(0.1)
                problems.extend(refusal(reply, 403, "authentication_error"))
        with attack.case("tenant disabled by config reload (SIGHUP), new connection") as problems:
            async with api_client(pki, "globex", api_port) as fresh:
                problems.extend(refusal(await fresh.get("/v1/ping"), 403, "authentication_error"))
        async with api_client(pki, "acme", api_port) as acme:
            assert (await acme.get("/v1/ping")).status == 200  # control: other tenants carry on
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    attack.verdict()


# ------------------------------------------------------------------------------------------- BOLA


async def test_bola(gw: RunningGateway, acme: Api, globex: Api) -> None:
    """globex's certificate on acme's objects, through every route with an id (probes shared with
    tests/e2e/test_bola.py): 404, as for an id that exists nowhere, and acme's objects unchanged."""
    attack = MATRIX.attack("BOLA")
    ids = await acme_objects(acme, gw)
    routed = routes_with_ids(gw)
    for method, template in sorted(routed - set(PROBES) - NOT_TENANT_OBJECTS):
        with attack.case(f"{method} {template}") as problems:
            problems.append("no probe for this route: add one to PROBES in tests/e2e/test_bola.py")
    probes = {f"{m} {t}": probe for (m, t), probe in PROBES.items() if (m, t) in routed} | SMUGGLED
    before = await snapshot(acme, ids)
    for what, probe in probes.items():
        with attack.case(what) as problems:
            theirs = await probe(globex, ids)
            problems.extend(refusal(theirs, 404, code="resource_missing"))
            if normalized(theirs, ids) != normalized(await probe(globex, NOBODY), NOBODY):
                problems.append("distinguishable from an id that exists nowhere")
            if (after := await snapshot(acme, ids)) != before:
                problems.append("acme's objects changed")
                before = after
    with attack.case("capture acme's payment with acme's next idempotency key") as problems:
        capture = f"/v1/payments/{ids['payment']}/capture"
        problems.extend(
            refusal(await globex.post(capture, {}, key="shared-key"), 404, code="resource_missing")
        )
        problems.extend(
            succeeded(await acme.post(capture, {}, key="shared-key"), "acme's own capture, same key")
        )
    attack.verdict()


# ------------------------------------------------------------------------------- mass assignment

READ_ONLY: dict[str, dict[str, Any]] = {
    "/v1/payments": {
        "id": "pay_mine",
        "object": "payment",
        "status": "succeeded",
        "amount_captured": 12850,
        "amount_refunded": 0,
        "connector": "iso8583_card",
        "connector_reference": "ref_mine",
        "risk": {"score": 0, "decision": "allow", "reasons": []},
        "next_action": {"type": "redirect", "url": "https://example.com"},
        "bill_posting": {"status": "posted"},
        "failure": {"code": "card_declined"},
        "created": "2020-01-01T00:00:00Z",
        "updated": "2020-01-01T00:00:00Z",
        "livemode": True,
        "tenant": "globex",
        "payment_method.card.brand": "visa",
        "payment_method.card.bin": "411111",
        "payment_method.card.last4": "4242",
    },
    "/v1/refunds": {
        "id": "re_mine",
        "status": "succeeded",
        "currency": "USD",
        "created": "2020-01-01T00:00:00Z",
        "failure": {"code": "x"},
        "tenant": "globex",
    },
    "/v1/accounts": {
        "id": "acct_mine",
        "object": "account",
        "balance": {"available": 10**9, "pending": 0},
        "created": "2020-01-01T00:00:00Z",
        "tenant": "globex",
    },
    "/v1/tokens": {
        "id": "tok_mine",
        "type": "card",
        "created": "2020-01-01T00:00:00Z",
        "card.brand": "visa",
        "card.last4": "4242",
    },
    "/v1/accounts/{id}/topups": {"id": "pay_mine", "status": "succeeded", "amount_captured": 500},
    "/v1/payments/{id}/capture": {"amount_captured": 12850, "status": "succeeded"},
    "/v1/payments/{id}/cancel": {"status": "canceled", "amount_refunded": 12850},
}


async def test_mass_assignment(gw: RunningGateway, acme: Api) -> None:
    attack = MATRIX.attack("mass assignment")
    ids = await acme_objects(acme, gw)
    card = {"number": PANS[1], "exp_month": 3, "exp_year": 2031}
    targets: dict[str, tuple[str, dict[str, Any]]] = {
        "/v1/payments": ("/v1/payments", card_payment()),
        "/v1/refunds": ("/v1/refunds", {"payment": ids["captured"], "amount": 100}),
        "/v1/accounts": ("/v1/accounts", {"currency": "CNY", "customer": "cus_mass"}),
        "/v1/tokens": ("/v1/tokens", {"card": card}),
        "/v1/accounts/{id}/topups": (f"/v1/accounts/{ids['account']}/topups", topup_body()),
        "/v1/payments/{id}/capture": (f"/v1/payments/{ids['payment']}/capture", {}),
        "/v1/payments/{id}/cancel": (f"/v1/payments/{ids['payment']}/cancel", {}),
    }
    pool = gw.api[DB_POOL]
    for route, fields in READ_ONLY.items():
        path, body = targets[route]
        for name, value in fields.items():
            with attack.case(f"POST {route} with {name}") as problems:
                before = await fingerprint(pool)
                reply = await call(acme, "POST", path, setting(body, name, value), key=new_key())
                problems.extend(refusal(reply, 400, code="parameter_unknown", param=name))
                problems.extend(changed(before, await fingerprint(pool)))
    attack.verdict()


# --------------------------------------------------------------------------- callback signatures

BANK_SECRET = "whsec_matrix_bank"
WALLET_SECRET = "whsec_matrix_wallet"
BANK = "/v1/connectors/bank_transfer/callbacks"


@dataclass
class BankStack:
    gw: RunningGateway
    acme: Api
    sender: Api  # the sandbox's client certificate: callbacks are authenticated by signature alone

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> Reply:
        async with self.sender.session.post(self.sender.base + path, data=body, headers=headers) as resp:
            raw = await resp.read()
            return Reply(resp.status, orjson.loads(raw) if raw else None, dict(resp.headers), raw)

    async def state(self, payment_id: str) -> tuple[Any, ...]:
        """Everything a notice could change: the payment, its events, its ledger transactions."""
        payment = (await self.acme.get(f"/v1/payments/{payment_id}")).body
        events = (await self.acme.get("/v1/events", object=payment_id, limit="100")).body["data"]
        async with self.gw.api[DB_POOL].acquire() as conn:
            ledger = await conn.fetchval(
                "SELECT count(*) FROM ledger_transactions WHERE payment_id = $1", payment_id
            )
        return payment, [e["id"] for e in events], ledger


@pytest.fixture
async def bank(roomy: Settings, pki: PkiPaths) -> AsyncIterator[BankStack]:
    replace = msgspec.structs.replace
    signing = replace(
        roomy, connectors={**roomy.connectors, "bank_transfer": ConnectorSettings(secret=BANK_SECRET)}
    )
    sandbox = await BankSandbox(signing, settle_after=float("inf"), port=0).start()  # transfers stay pending
    options = {"callback_base": f"https://localhost:{free_port()}"}  # the test posts the notices itself
    routed = replace(
        roomy,
        sandbox=SandboxSettings(bank=sandbox.port, ewallet=free_port()),
        connectors={
            **roomy.connectors,
            "bank_transfer": ConnectorSettings(secret=BANK_SECRET, options=options),
            "ewallet": ConnectorSettings(secret=WALLET_SECRET, options=options),
        },
        routing=replace(roomy.routing, bank_transfer=["bank_transfer"]),
    )
    try:
        async with (
            gateway(routed) as gw,
            api_client(pki, "acme", gw.api_port) as acme,
            api_client(pki, "sandbox", gw.api_port) as sender,
        ):
            yield BankStack(gw, acme, sender)
    finally:
        await sandbox.close()


def signed(
    body: bytes, secret: str = BANK_SECRET, header: str = "Bank-Signature", **kw: int
) -> dict[str, str]:
    return {"Content-Type": "application/json", header: sign_webhook(body, [secret], **kw)}


async def test_callback_signatures(bank: BankStack) -> None:
    attack = MATRIX.attack("callback signatures")
    transfer = {"type": "bank_transfer", "bank_transfer": {"account_number": "6222000099991234"}}
    payment = ok(
        await bank.acme.post("/v1/payments", {"amount": 7700, "currency": "CNY", "payment_method": transfer})
    )
    assert payment["status"] == "processing"
    async with bank.gw.api[DB_POOL].acquire() as conn:
        attempt = await conn.fetchval(
            "SELECT id FROM payment_attempts WHERE payment_id = $1 AND operation = 'authorize'", payment["id"]
        )

    def notice(status: str = "settled") -> bytes:
        return orjson.dumps(
            {"reference": attempt, "status": status, "transfer_id": payment["connector_reference"]}
        )

    genuine, now = notice(), int(time.time())
    refused: dict[str, tuple[str, bytes, dict[str, str]]] = {
        "forged signature (a guessed secret)": (BANK, genuine, signed(genuine, "whsec_guessed")),
        "signed with the wallet's secret": (BANK, genuine, signed(genuine, WALLET_SECRET)),
        "tampered body (settled → rejected)": (BANK, notice("rejected"), signed(genuine)),
        "missing signature": (BANK, genuine, {"Content-Type": "application/json"}),
        "signature under the wallet's header name": (
            BANK,
            genuine,
            signed(genuine, header="Wallet-Signature"),
        ),
        "garbled signature": (BANK, genuine, {"Bank-Signature": "t=1,v1=zz"}),
        "timestamp without a signature": (BANK, genuine, {"Bank-Signature": f"t={now}"}),
        "stale timestamp (1 h old)": (BANK, genuine, signed(genuine, timestamp=now - 3600)),
        "stale timestamp (6 min old)": (BANK, genuine, signed(genuine, timestamp=now - 360)),
        "timestamp 1 h in the future": (BANK, genuine, signed(genuine, timestamp=now + 3600)),
        "the bank's notice at the wallet's route": (
            "/v1/connectors/ewallet/callbacks",
            genuine,
            signed(genuine),
        ),
    }
    before = await bank.state(payment["id"])
    for what, (path, body, headers) in refused.items():
        with attack.case(what) as problems:
            problems.extend(refusal(await bank.post(path, body, headers), 400, code="signature_invalid"))
            if await bank.state(payment["id"]) != before:
                problems.append("the payment, its events or its ledger changed")
    with attack.case("replayed notice (the same valid notice twice)") as problems:
        headers = signed(genuine)
        first = await bank.post(BANK, genuine, headers)
        if (first.status, first.body) != (200, {"received": True, "applied": True}):
            problems.append(f"the genuine notice itself: {describe(first)}")
        settled = await bank.state(payment["id"])
        again = await bank.post(BANK, genuine, headers)
        problems.extend(screen(again))
        if (again.status, again.body) != (200, {"received": True, "applied": False}):
            problems.append(f"the replay answered {describe(again)}, expected 200 applied=false")
        if await bank.state(payment["id"]) != settled:
            problems.append("the replay changed the payment, its events or its ledger")
        if settled[0]["status"] != "succeeded" or settled[2] != 1:
            problems.append(f"settled as {settled[0]['status']} with {settled[2]} ledger transactions")
    attack.verdict()


# -------------------------------------------------------------------- oversized and nested bodies


def with_raw(body: dict[str, Any], name: str, raw: bytes) -> bytes:
    """``body`` as JSON with field ``name`` spelled as ``raw`` (what no encoder would write)."""
    marker = "@@matrix@@"
    return json.dumps({**body, name: marker}).encode().replace(f'"{marker}"'.encode(), raw)


async def test_oversized_and_nested_bodies(
    gw: RunningGateway, acme: Api, pki: PkiPaths, roomy: Settings
) -> None:
    attack = MATRIX.attack("oversized and nested bodies")
    pool = gw.api[DB_POOL]
    limit = roomy.server.max_body_bytes
    huge = b'{"description": "' + b"x" * limit + b'"}'
    for path in (
        "/v1/payments",
        "/v1/refunds",
        "/v1/accounts",
        "/v1/tokens",
        f"/v1/payments/{NOBODY['payment']}/capture",
    ):
        with attack.case(
            f"POST {path.replace(NOBODY['payment'], '{id}')}: body of max_body_bytes + 1"
        ) as problems:
            before = await fingerprint(pool)
            problems.extend(
                refusal(
                    await call(acme, "POST", path, data=huge, key=new_key()), 413, code="request_too_large"
                )
            )
            problems.extend(changed(before, await fingerprint(pool)))

    with attack.case("POST /v1/payments: chunked body past max_body_bytes") as problems:

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(huge), 65536):
                yield huge[start : start + 65536]

        headers = {"Content-Type": "application/json", "Idempotency-Key": new_key()}
        async with acme.session.post(acme.base + "/v1/payments", data=chunks(), headers=headers) as resp:
            raw = await resp.read()
        problems.extend(
            refusal(
                Reply(resp.status, orjson.loads(raw) if raw else None, dict(resp.headers), raw),
                413,
                code="request_too_large",
            )
        )

    with attack.case("POST /v1/payments: Content-Length of 2 GiB announced") as problems:
        reader, writer = await tls_open(pki, "acme", gw.api_port)
        try:
            writer.write(stalled_post("/v1/payments", declared=2**31, sent=b"{"))
            status, headers, body = await read_response(reader, within=5)
        finally:
            writer.close()
        problems.extend(
            refusal(Reply(status, body, headers, orjson.dumps(body)), 413, code="request_too_large")
        )

    pay = card_payment()
    bad: dict[str, bytes] = {
        "arrays nested 10,000 deep": deep(10_000),
        "objects nested 10,000 deep": deep_object(10_000),
        "arrays nested 10,000 deep in metadata": with_raw(pay, "metadata", b'{"a": ' + deep(10_000) + b"}"),
        "objects nested 10,000 deep in description": with_raw(pay, "description", deep_object(10_000)),
        "metadata: an array of 100,000 strings": orjson.dumps({**pay, "metadata": {"a": ["x"] * 100_000}}),
        "metadata: a value of 100 kB": orjson.dumps({**pay, "metadata": {"a": "x" * 100_000}}),
        "metadata: a key of 10 kB": orjson.dumps({**pay, "metadata": {"k" * 10_000: "v"}}),
        "metadata: 10,000 keys": orjson.dumps({**pay, "metadata": {f"k{i}": "v" for i in range(10_000)}}),
        "description of 600 kB": orjson.dumps({**pay, "description": "x" * 600_000}),
        "customer.id of 100 kB": orjson.dumps(setting(pay, "customer.id", "c" * 100_000)),
        "card.holder_name of 100 kB": orjson.dumps(
            setting(pay, "payment_method.card.holder_name", "n" * 100_000)
        ),
        "amount of 5,000 digits": with_raw(pay, "amount", b"9" * 5000),
        "payment_method: an array of 100,000 numbers": orjson.dumps({**pay, "payment_method": [1] * 100_000}),
    }
    for what, data in bad.items():
        with attack.case(f"POST /v1/payments: {what}") as problems:
            before = await fingerprint(pool)
            problems.extend(refusal(await call(acme, "POST", "/v1/payments", data=data, key=new_key()), 400))
            problems.extend(changed(before, await fingerprint(pool)))
    for path, body in (
        ("/v1/accounts", {"currency": "CNY", "metadata": {"a": ["x"] * 100_000}}),
        ("/v1/refunds", {"payment": NOBODY["payment"], "metadata": {"a": "x" * 100_000}}),
    ):
        with attack.case(f"POST {path}: huge metadata") as problems:
            before = await fingerprint(pool)
            problems.extend(refusal(await call(acme, "POST", path, body, key=new_key()), 400))
            problems.extend(changed(before, await fingerprint(pool)))
    attack.verdict()


# ------------------------------------------------------------------------------------- slowloris

DEADLINE = 0.5  # header and body deadlines here (10 s and 30 s by default)
PING = b"GET /v1/ping HTTP/1.1\r\nHost: localhost\r\n"


async def cut_off(pki: PkiPaths, port: int, start: bytes, drip: bytes = b"") -> list[str]:
    """Send ``start`` (then ``drip`` every 0.2 s): the gateway must answer 408 and hang up."""
    reader, writer = await tls_open(pki, "acme", port)
    started = time.monotonic()
    writer.write(start)

    async def dribble() -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
            for _ in range(100):
                await asyncio.sleep(0.2)
                writer.write(drip)
                await writer.drain()

    dribbler = asyncio.create_task(dribble()) if drip else None
    try:
        status, headers, body = await read_response(reader, within=DEADLINE + 4)
        problems = refusal(Reply(status, body, headers, orjson.dumps(body)), 408, code="request_timeout")
        if not DEADLINE - 0.2 <= time.monotonic() - started < DEADLINE + 4:
            problems.append(f"answered after {time.monotonic() - started:.1f} s")
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            if await asyncio.wait_for(reader.read(), 5) != b"":
                problems.append("the connection was left open")
        return problems
    finally:
        if dribbler is not None:
            dribbler.cancel()
        writer.close()


async def hung_up(port: int, send: bytes, within: float) -> list[str]:
    """Plain TCP, no complete TLS handshake: the gateway must close it within ``within`` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(send)
        try:
            await asyncio.wait_for(reader.read(), within)
        except TimeoutError:
            return [f"still open after {within} s"]
        except ConnectionError:
            pass
        return []
    finally:
        writer.close()


async def test_slowloris(roomy: Settings, pki: PkiPaths) -> None:
    attack = MATRIX.attack("slowloris")
    hardened = with_limits(roomy, input={"header_timeout": DEADLINE, "body_timeout": DEADLINE})
    handshake = hardened.server.tls_handshake_timeout + 3
    payment_head = (
        b"POST /v1/payments HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Idempotency-Key: matrix-slow\r\nContent-Length: 4000\r\n\r\n"
    )
    async with gateway(hardened) as gw:
        port, pool = gw.api_port, gw.api[DB_POOL]
        before = await fingerprint(pool)

        async def flood() -> list[str]:
            answers = await asyncio.gather(*(cut_off(pki, port, PING, b"X") for _ in range(20)))
            return [f"connection {i}: {'; '.join(p)}" for i, p in enumerate(answers) if p]

        probes: dict[str, Callable[[], Awaitable[list[str]]]] = {
            "slow head: a header byte every 0.2 s": lambda: cut_off(pki, port, PING, b"X"),
            "silent after the handshake": lambda: cut_off(pki, port, b""),
            "slow body: 13 of 1,000 bytes, then nothing": lambda: cut_off(
                pki, port, stalled_post("/v1/ping")
            ),
            "slow body on POST /v1/payments: a byte every 0.2 s": lambda: cut_off(
                pki, port, payment_head + b'{"amount": 1', b" "
            ),
            "silent TCP connection (no TLS at all)": lambda: hung_up(port, b"", handshake),
            "partial TLS ClientHello, then nothing": lambda: hung_up(
                port, b"\x16\x03\x01\x02\x00\x01", handshake
            ),
            "20 slow heads at once": flood,
        }
        served: list[int] = []

        async def serve_others(stop: asyncio.Event) -> None:
            while not stop.is_set():  # a new connection each time: the listener must keep accepting
                async with (
                    client(pki, "globex") as session,
                    session.get(f"https://localhost:{port}/v1/ping") as r,
                ):
                    served.append(r.status)
                await asyncio.sleep(0.05)

        async def run(what: str, probe: Callable[[], Awaitable[list[str]]]) -> None:
            with attack.case(what) as problems:
                problems.extend(await probe())

        stop = asyncio.Event()
        others = asyncio.create_task(serve_others(stop))
        await asyncio.gather(*(run(what, probe) for what, probe in probes.items()))
        stop.set()
        await others
        with attack.case("others served throughout, nothing stored") as problems:
            if not served or set(served) != {200}:
                problems.append(f"a normal client got {sorted(set(served))} in {len(served)} requests")
            problems.extend(changed(before, await fingerprint(pool)))
    attack.verdict()


# ---------------------------------------------------------------------------- NUL and odd digits

THIRTY = "9" * 30
BIGINT_PLUS_ONE = str(2**63)
# Digits that str.isdigit() accepts and int() may too: superscript two, circled one, Arabic-Indic.
ARABIC_THREE = "\u0663"
ARABIC_TEN = "\u0661\u0660"
ARABIC_YEAR = "\u0661\u0667" + "\u0660" * 8  # 1700000000 (Unix seconds)
ARABIC_AMOUNT = "\u0661\u0662\u0668\u0665\u0660"
ODD_DIGITS = ("²", "①", ARABIC_THREE)
PREFIX = {"payments": "pay_", "refunds": "re_", "events": "evt_", "accounts": "acct_", "billers": "bil_"}


async def test_nul_and_odd_digits(gw: RunningGateway, acme: Api, ops: Api) -> None:
    attack = MATRIX.attack("NUL and odd digits")
    pool = gw.api[DB_POOL]
    ids = await acme_objects(acme, gw)

    async def manual() -> str:
        return str(ok(await acme.post("/v1/payments", card_payment(capture_method="manual")))["id"])

    async def refused_then_retried(what: str, path: str, bad: Any, good: Any, param: str | None) -> None:
        """``bad`` (a body, or raw bytes) is a 400 naming ``param`` and stores nothing; then the same
        Idempotency-Key with ``good`` succeeds: a refused request does not burn its key."""
        with attack.case(what) as problems:
            key, before = new_key(), await fingerprint(pool)
            raw = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
            problems.extend(refusal(await call(acme, "POST", path, data=raw, key=key), 400, param=param))
            problems.extend(changed(before, await fingerprint(pool)))
            problems.extend(
                succeeded(await call(acme, "POST", path, good, key=key), "then the same key, corrected")
            )

    # Control characters in every stored string.
    pay = card_payment()
    transfer = {
        "type": "bank_transfer",
        "bank_transfer": {"account_number": "6222000099991234", "holder_name": "Li\x00"},
    }
    bill = {"biller": "bil_cn_power", "customer_params": {"account_number": "00312\x0034567"}}
    in_payments: dict[str, tuple[Any, str]] = {
        "description": (setting(pay, "description", "June\x00"), "description"),
        "description (\\u0001)": (setting(pay, "description", "June\x01"), "description"),
        "description (ESC)": (setting(pay, "description", "\x1b[2JJune"), "description"),
        "description (\\u001f)": (setting(pay, "description", "June\x1f"), "description"),
        "metadata value": (setting(pay, "metadata", {"order": "A-\x0017"}), "metadata.order"),
        "metadata key": (setting(pay, "metadata", {"ord\x00er": "A-17"}), "metadata"),
        "customer.id": (setting(pay, "customer.id", "cus\x0042"), "customer.id"),
        "customer.phone": (setting(pay, "customer.phone", "+86138\x0000138000"), "customer.phone"),
        "customer.ip": (setting(pay, "customer.ip", "203.0.113.7\x00"), "customer.ip"),
        "customer.email": (setting(pay, "customer.email", "li\x00@example.com"), "customer.email"),
        "customer.device_id": (setting(pay, "customer.device_id", "dev\x009"), "customer.device_id"),
        "card.holder_name": (
            setting(pay, "payment_method.card.holder_name", "Li\x00Lei"),
            "payment_method.card.holder_name",
        ),
        "card.number": (
            setting(pay, "payment_method.card.number", PANS[0][:8] + "\x00" + PANS[0][8:]),
            "payment_method.card.number",
        ),
        "card.cvc": (setting(pay, "payment_method.card.cvc", "12\x003"), "payment_method.card.cvc"),
        "bank_transfer.holder_name": (
            {**pay, "payment_method": transfer},
            "payment_method.bank_transfer.holder_name",
        ),
        "prepaid.code": (
            setting(pay, "payment_method", {"type": "prepaid", "prepaid": {"code": "PP-\x0012345678"}}),
            "payment_method.prepaid.code",
        ),
        "bill.customer_params value": ({**pay, "bill": bill}, "bill.customer_params.account_number"),
        "currency": (setting(pay, "currency", "CN\x00Y"), "currency"),
        # Numbers of the wrong spelling or out of range.
        "amount 2**63": (setting(pay, "amount", 2**63), "amount"),
        "amount of 30 digits": (setting(pay, "amount", int(THIRTY)), "amount"),
        "amount 1e400": (with_raw(pay, "amount", b"1e400"), "amount"),
        "amount -1": (setting(pay, "amount", -1), "amount"),
        "amount in Arabic-Indic digits": (setting(pay, "amount", ARABIC_AMOUNT), "amount"),
        "card.exp_year 10**20": (
            setting(pay, "payment_method.card.exp_year", 10**20),
            "payment_method.card.exp_year",
        ),
    }
    for what, (bad, param) in in_payments.items():
        await refused_then_retried(f"POST /v1/payments: {what}", "/v1/payments", bad, pay, param)
    await refused_then_retried(
        "POST /v1/payments: a raw NUL byte in a JSON string",
        "/v1/payments",
        with_raw(pay, "description", b'"June\x00"'),
        pay,
        None,
    )
    account, captured = ids["account"], ids["captured"]
    refund = {"payment": captured, "amount": 100}
    token = {"card": {"number": PANS[1], "exp_month": 3, "exp_year": 2031, "holder_name": "Li Lei"}}
    elsewhere: list[tuple[str, str, Any, Any, str]] = [
        (
            "POST /v1/accounts: customer",
            "/v1/accounts",
            {"currency": "CNY", "customer": "cus\x00x"},
            {"currency": "CNY", "customer": "cus_x"},
            "customer",
        ),
        (
            "POST /v1/accounts: metadata value",
            "/v1/accounts",
            {"currency": "CNY", "metadata": {"n": "\x00"}},
            {"currency": "CNY"},
            "metadata.n",
        ),
        (
            "POST /v1/refunds: metadata value",
            "/v1/refunds",
            {**refund, "metadata": {"why": "dup\x00"}},
            refund,
            "metadata.why",
        ),
        (
            "POST /v1/refunds: payment id",
            "/v1/refunds",
            {**refund, "payment": captured + "\x00"},
            refund,
            "payment",
        ),
        ("POST /v1/refunds: amount 2**63", "/v1/refunds", {**refund, "amount": 2**63}, refund, "amount"),
        (
            "POST /v1/tokens: card.holder_name",
            "/v1/tokens",
            setting(token, "card.holder_name", "Li\x00"),
            token,
            "card.holder_name",
        ),
        (
            "POST /v1/accounts/{id}/topups: description",
            f"/v1/accounts/{account}/topups",
            {**topup_body(), "description": "\x00"},
            topup_body(),
            "description",
        ),
        (
            "POST /v1/payments/{id}/capture: amount_to_capture 2**63",
            f"/v1/payments/{await manual()}/capture",
            {"amount_to_capture": 2**63},
            {},
            "amount_to_capture",
        ),
        (
            "POST /v1/payments/{id}/cancel: cancellation_reason",
            f"/v1/payments/{await manual()}/cancel",
            {"cancellation_reason": "duplicate\x00"},
            {},
            "cancellation_reason",
        ),
    ]
    for what, path, bad, good, param in elsewhere:
        await refused_then_retried(what, path, bad, good, param)

    # %00 and odd digits in every path id; a POST refused so must not burn its key either.
    redo = {
        "/v1/payments/{id}/capture": (await manual(), {}),
        "/v1/payments/{id}/cancel": (await manual(), {}),
        "/v1/accounts/{id}/topups": (account, topup_body()),
    }
    operator_only = operator_routes(gw)
    for index, (method, template) in enumerate(sorted(routes_with_ids(gw))):
        name, prefix = placeholder(template), PREFIX.get(template.split("/")[2], "")
        caller = ops if (method, template) in operator_only else acme
        for value in (f"{prefix}%00", f"{prefix}x%01", prefix + ODD_DIGITS[index % len(ODD_DIGITS)]):
            with attack.case(f"{method} {template} with {{{name}}} = {value}") as problems:
                key, before = new_key(), await fingerprint(pool)
                real, body = redo.get(template, ("", {}))
                # The other placeholders get well-formed values: only {name} is under test.
                path = as_path(template, {"list": "deny", "id": "rle_x1"} | {name: path_quote(value)})
                sent = body if method == "POST" else None
                problems.extend(refusal(await call(caller, method, path, sent, key=key), 400, param=name))
                problems.extend(changed(before, await fingerprint(pool)))
                if real and "%00" in value:
                    again = await call(acme, method, as_path(template, {name: real}), sent, key=key)
                    problems.extend(succeeded(again, "then the same key on the real id"))

    # NUL, odd digits and out-of-range numbers in query parameters.
    entries = f"/v1/accounts/{account}/entries"
    queries: list[tuple[str, str, str]] = [
        ("/v1/payments", "starting_after", "pay_%00"),
        ("/v1/payments", "ending_before", "pay_%00"),
        ("/v1/payments", "starting_after", "pay_①"),
        ("/v1/payments", "customer", "cus_%0042"),
        ("/v1/payments", "biller", "bil_cn_power%00"),
        ("/v1/payments", "status", "succeeded%00"),
        ("/v1/payments", "method", "card%00"),
        ("/v1/payments", "created_gte", "2026-01-01T00:00:00Z%00"),
        ("/v1/payments", "created_lte", ARABIC_YEAR),
        ("/v1/payments", "created_gte", THIRTY),
        ("/v1/payments", "amount_gte", "²"),
        ("/v1/payments", "amount_gte", ARABIC_TEN),
        ("/v1/payments", "amount_gte", "1%00"),
        ("/v1/payments", "amount_gte", THIRTY),
        ("/v1/payments", "amount_lte", BIGINT_PLUS_ONE),
        ("/v1/payments", "limit", ARABIC_TEN),
        ("/v1/payments", "limit", "²"),
        ("/v1/payments", "limit", THIRTY),
        ("/v1/payments", "limit", "101"),
        ("/v1/events", "type", "payment.succeeded%00"),
        ("/v1/events", "object", "pay_%00"),
        ("/v1/events", "starting_after", "evt_%00"),
        ("/v1/events", "ending_before", "evt_%00"),
        ("/v1/events", "starting_after", "evt_" + ARABIC_THREE),
        ("/v1/events", "limit", ARABIC_TEN),
        (entries, "starting_after", "le_%00"),
        (entries, "ending_before", "le_%00"),
        (entries, "starting_after", "le_²"),
        (entries, "starting_after", "le_①"),
        (entries, "starting_after", "le_" + ARABIC_THREE),
        (entries, "starting_after", "le_" + THIRTY),
        (entries, "starting_after", "le_" + BIGINT_PLUS_ONE),
        (entries, "ending_before", "le_" + BIGINT_PLUS_ONE),
        (entries, "limit", ARABIC_TEN),
        ("/v1/billers", "category", "water%00"),
        ("/v1/billers", "country", "CN%00"),
    ]
    for path, param, value in queries:
        with attack.case(f"GET {path.replace(account, '{id}')}?{param}={value}") as problems:
            reply = await call(acme, "GET", f"{path}?{param}={path_quote(value)}")
            problems.extend(refusal(reply, 400, param=param))
    attack.verdict()
