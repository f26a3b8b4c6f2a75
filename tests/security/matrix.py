"""The attack matrix's bookkeeping and probes: per attack class, the cases tried and those refused.

A case is *refused* when the gateway answers the expected 4xx in DESIGN's error shape (or refuses the
TLS handshake) and changes nothing. Every answer is also screened for what no answer may ever hold:
a 5xx, a traceback, a PAN. ``MATRIX`` lives for the session; tests/security/conftest.py prints it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import yarl
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto.pki import PkiPaths
from gateway.server import RunningGateway
from tests.e2e.test_bola import make_acme_objects
from tests.support.api import Api, Reply, card_payment

# Every PAN the matrix sends: none may come back in any answer.
PANS = ("4111111111111111", "5555555555554444")
ERROR_FIELDS = frozenset({"type", "code", "message", "param", "request_id"})


# ------------------------------------------------------------------------------------ bookkeeping


@dataclass
class Case:
    name: str
    problems: list[str]


@dataclass
class Attack:
    """One test's run of an attack class; its cases also count in the session's ``MATRIX``."""

    name: str
    record: list[Case]
    cases: list[Case] = field(default_factory=list)

    @contextmanager
    def case(self, name: str) -> Iterator[list[str]]:
        """Record one case: the block appends what was wrong (nothing appended: refused)."""
        problems: list[str] = []
        try:
            yield problems
        except Exception as exc:  # a probe that blew up is a case not refused, not the end of the class
            problems.append(f"{type(exc).__name__}: {exc}".strip())
        assert all(c.name != name for c in self.cases), f"duplicate case name: {name}"
        case = Case(name, problems)
        self.cases.append(case)
        self.record.append(case)

    def verdict(self) -> None:
        failed = [c for c in self.cases if c.problems]
        if failed:
            lines = "\n".join(f"  {c.name}: {'; '.join(c.problems)}" for c in failed)
            pytest.fail(
                f"{self.name}: {len(failed)} of {len(self.cases)} cases not refused:\n{lines}", pytrace=False
            )


class Matrix:
    def __init__(self) -> None:
        self.classes: dict[str, list[Case]] = {}

    def attack(self, name: str) -> Attack:
        return Attack(name, self.classes.setdefault(name, []))

    def table(self) -> list[str]:
        """``class | tried | refused`` per class and in total, then the cases not refused."""
        if not self.classes:
            return []
        rows = [
            (name, len(cases), sum(not c.problems for c in cases)) for name, cases in self.classes.items()
        ]
        rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
        width = max(len(r[0]) for r in rows)
        lines = [f"{'class':<{width}} | tried | refused", f"{'-' * width}-|-------|--------"]
        lines += [f"{name:<{width}} | {tried:>5} | {refused:>7}" for name, tried, refused in rows]
        for name, cases in self.classes.items():
            lines += [f"not refused [{name}] {c.name}" for c in cases if c.problems]
        return lines


MATRIX = Matrix()


# ----------------------------------------------------------------------------------------- checks


def screen(reply: Reply) -> list[str]:
    """What no answer may hold, whatever the case: a 5xx, a traceback, a PAN."""
    problems = [f"answered {reply.status}"] if reply.status >= 500 else []
    if b"Traceback" in reply.raw or b'File "' in reply.raw:
        problems.append("a traceback in the body")
    problems += [f"PAN {pan[:6]}… in the body" for pan in PANS if pan.encode() in reply.raw]
    return problems


def describe(reply: Reply) -> str:
    error = reply.body.get("error") if isinstance(reply.body, dict) else None
    if not isinstance(error, dict):
        return f"{reply.status} {reply.raw[:80]!r}"
    return f"{reply.status} {error.get('type')}/{error.get('code')} param={error.get('param')}"


def refusal(
    reply: Reply,
    status: int,
    type_: str = "invalid_request_error",
    *,
    code: str | None = None,
    param: str | None = None,
) -> list[str]:
    """The answer must be ``status`` with an error of ``type_`` (and ``code``, ``param`` if given)."""
    problems = screen(reply)
    want = f"{status} {type_}/{code or '*'} param={param or '*'}"
    if reply.status != status:
        return [*problems, f"answered {describe(reply)}, expected {want}"]
    if not reply.raw:  # HEAD: the status is all there is
        return problems
    body = reply.body
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(body) != {"error"} or not set(error) <= ERROR_FIELDS:
        return [*problems, f"not the error shape: {reply.raw[:120]!r}"]
    headers = {k.lower(): v for k, v in reply.headers.items()}
    if error.get("request_id") is None or error.get("request_id") != headers.get("request-id"):
        problems.append("request_id missing or not the Request-Id header")
    if not isinstance(error.get("message"), str):
        problems.append("no message")
    got = (error.get("type"), error.get("code") if code else None, error.get("param") if param else None)
    if got != (type_, code, param):
        problems.append(f"answered {describe(reply)}, expected {want}")
    return problems


def succeeded(reply: Reply, what: str) -> list[str]:
    return [] if reply.status == 200 else [f"{what}: answered {describe(reply)}"]


# ------------------------------------------------------------------------------------ HTTP probes


async def call(
    api: Api,
    method: str,
    path: str,
    body: Any = None,
    *,
    data: bytes | None = None,
    key: str | None = None,
) -> Reply:
    """``path`` goes out exactly as given (already percent-encoded: ``%00`` stays a NUL)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    if data is None and body is not None:
        data = orjson.dumps(body)
    url = yarl.URL(api.base + path, encoded=True)
    async with api.session.request(method, url, data=data, headers=headers) as resp:
        raw = await resp.read()
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        return Reply(resp.status, parsed, dict(resp.headers), raw)


async def handshake_refused(url: str, ctx: ssl.SSLContext, *, or_403: bool = True) -> list[str]:
    """Refused: the TLS handshake fails (or, if ``or_403``, the gateway answers 403 authentication_error)."""
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
            session.get(url) as resp,
        ):
            reply = Reply(resp.status, None, dict(resp.headers), await resp.read())
    except aiohttp.ClientConnectorCertificateError as exc:  # our side refused: the probe proves nothing
        return [f"the client refused the gateway's certificate: {exc}"]
    except (aiohttp.ClientConnectionError, ssl.SSLError, OSError):
        return []
    reply.body = orjson.loads(reply.raw) if reply.raw.startswith(b"{") else None
    if not or_403:
        return [f"handshake accepted: answered {describe(reply)}"]
    return refusal(reply, 403, "authentication_error")


async def client_speaks(version: ssl.TLSVersion, pki: PkiPaths, ctx: ssl.SSLContext) -> bool:
    """Control: can this client negotiate ``version`` with a server that allows it? (Else a refusal by
    the gateway would prove nothing.)"""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    server.set_ciphers("ALL:@SECLEVEL=0")
    server.load_cert_chain(pki.server_cert, pki.server_key)

    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(hang_up, "127.0.0.1", 0, ssl=server)
    try:
        port = listener.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        negotiated = writer.get_extra_info("ssl_object").version()
        writer.close()
        return bool(negotiated == {ssl.TLSVersion.TLSv1: "TLSv1", ssl.TLSVersion.TLSv1_1: "TLSv1.1"}[version])
    except (ssl.SSLError, OSError):
        return False
    finally:
        listener.close()


# ------------------------------------------------------------------------------------------ state

# Everything a refused request could have written. Audit tables are left out: the sealer links
# events in the background, and a refusal may rightly be audited.
TABLES = (
    "payments",
    "payment_attempts",
    "refunds",
    "card_tokens",
    "ledger_accounts",
    "ledger_transactions",
    "ledger_entries",
    "events",
    "idempotency_keys",
)
_FINGERPRINT = "SELECT " + ", ".join(
    f"(SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {table} t)"
    for table in TABLES
)


async def fingerprint(pool: asyncpg.Pool) -> tuple[str, ...]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(_FINGERPRINT)
    assert row is not None
    return tuple(row)


def changed(before: Sequence[str], after: Sequence[str]) -> list[str]:
    return [f"{table} changed" for table, old, new in zip(TABLES, before, after, strict=True) if old != new]


def ok(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200, reply.body
    return dict(reply.body)


async def acme_objects(acme: Api, gw: RunningGateway) -> dict[str, str]:
    """One of each of acme's objects, by the kinds tests/e2e/test_bola.py probes."""
    return await make_acme_objects(acme, gw)


def topup_body() -> dict[str, Any]:
    return {k: v for k, v in card_payment(amount=500).items() if k != "customer"}


# ------------------------------------------------------------------------------------ odd certificates


@dataclass(frozen=True)
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def of(cls, pki: PkiPaths) -> Issuer:
        key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()), key)

    @classmethod
    def impostor(cls, like: x509.Certificate) -> Issuer:
        """A CA of its own key that copies ``like``'s name: same issuer DN, different signature."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(like.subject)
            .issuer_name(like.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)


def mint(
    into: PkiPaths,
    name: str,
    *,
    uris: Sequence[str],
    issuer: Issuer | None,
    valid: tuple[dt.timedelta, dt.timedelta] = (dt.timedelta(days=-1), dt.timedelta(days=30)),
) -> None:
    """Write client certificate ``name`` (SAN ``uris``, validity relative to now) into ``into``;
    ``issuer=None`` makes it self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + valid[0])
        .not_valid_after(now + valid[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if uris:
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    into.clients_dir.mkdir(parents=True, exist_ok=True)
    into.client_key(name).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    into.client_cert(name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def path_quote(value: str) -> str:
    """Percent-encode non-ASCII (UTF-8) but keep ``%xx`` escapes the caller wrote."""
    return "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode()) for c in value)


def deep(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


def deep_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def as_path(template: str, values: dict[str, str]) -> str:
    path = template
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


def placeholder(template: str) -> str:
    return template.partition("{")[2].partition("}")[0]


def write_text(path: Path, text: str) -> None:
    """Replace a file in one step, so a reloading reader never sees half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
