"""Dev PKI: file layout, permissions, idempotency, SPIFFE parsing and a real mTLS handshake with CRL."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from crypto.pki import (
    PkiError,
    PkiPaths,
    init_pki,
    issue_client,
    parse_spiffe_id,
    revoke_client,
    spiffe_id,
    write_crl,
)

TENANTS = {"acme": "client", "globex": "client", "ops": "operator"}


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    paths = PkiPaths(tmp_path / "pki")
    init_pki(paths, TENANTS)
    return paths


def _crl(paths: PkiPaths) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(paths.crl.read_bytes())


def _crl_number(paths: PkiPaths) -> int:
    return _crl(paths).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- SPIFFE


def test_spiffe_id_round_trip() -> None:
    uri = spiffe_id("acme", "client")
    assert uri == "spiffe://payhub.local/tenant/acme/role/client"
    assert parse_spiffe_id(uri) == ("acme", "client")
    assert parse_spiffe_id("spiffe://payhub.local/tenant/ops_1-x/role/operator") == ("ops_1-x", "operator")
    assert parse_spiffe_id(f"spiffe://payhub.local/tenant/{'a' * 63}/role/client") == ("a" * 63, "client")


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://other.local/tenant/acme/role/client",
        "spiffe://payhub.local.evil/tenant/acme/role/client",
        "spiffe://PAYHUB.LOCAL/tenant/acme/role/client",
        "SPIFFE://payhub.local/tenant/acme/role/client",
        "https://payhub.local/tenant/acme/role/client",
        "spiffe://user@payhub.local/tenant/acme/role/client",
        "spiffe://payhub.local:443/tenant/acme/role/client",
        "spiffe://payhub.local/tenant/acme/role/client/extra",
        "spiffe://payhub.local/x/tenant/acme/role/client",
        "spiffe://payhub.local/tenant/acme/role/client/",
        "spiffe://payhub.local//tenant/acme/role/client",
        "spiffe://payhub.local/tenant/acme/role/admin",
        "spiffe://payhub.local/tenant/acme/role/Client",
        "spiffe://payhub.local/tenant/acme/role/",
        "spiffe://payhub.local/tenant/Acme/role/client",
        "spiffe://payhub.local/tenant//role/client",
        "spiffe://payhub.local/tenant/-acme/role/client",
        "spiffe://payhub.local/tenant/ac%6De/role/client",
        f"spiffe://payhub.local/tenant/{'a' * 64}/role/client",
        "spiffe://payhub.local/tenant/acme/role/client?x=1",
        "spiffe://payhub.local/tenant/acme/role/client#frag",
        "spiffe://payhub.local/tenant/acme/role/client\n",
        " spiffe://payhub.local/tenant/acme/role/client",
        "",
    ],
)
def test_parse_spiffe_id_rejects(uri: str) -> None:
    assert parse_spiffe_id(uri) is None


def test_spiffe_id_validates_input() -> None:
    with pytest.raises(PkiError, match="role"):
        spiffe_id("acme", "admin")
    with pytest.raises(PkiError, match="tenant"):
        spiffe_id("Acme", "client")


# --------------------------------------------------------------------------------------- init / files


def test_init_creates_layout_and_is_idempotent(tmp_path: Path) -> None:
    paths = PkiPaths(tmp_path / "home" / "pki")
    created = init_pki(paths, TENANTS)

    expected = {
        paths.ca_cert,
        paths.ca_key,
        paths.server_cert,
        paths.server_key,
        paths.crl,
        paths.index,
        *(f(name) for name in TENANTS for f in (paths.client_cert, paths.client_key, paths.client_p12)),
    }
    assert set(created) == expected
    assert len(created) == len(expected)
    assert all(p.is_file() for p in expected)
    # No temp files left behind by the atomic writes.
    assert {p for p in paths.root.rglob("*") if p.is_file()} == expected

    before = _snapshot(paths.root)
    assert init_pki(paths, TENANTS) == []
    assert _snapshot(paths.root) == before

    # A tenant added later gets a client; nothing existing is touched.
    created = init_pki(paths, {**TENANTS, "initech": "client"})
    assert set(created) == {
        paths.client_cert("initech"),
        paths.client_key("initech"),
        paths.client_p12("initech"),
    }
    after = _snapshot(paths.root)
    assert all(after[k] == v for k, v in before.items() if k != "index.json")


def test_modes(pki: PkiPaths) -> None:
    for key in [pki.ca_key, pki.server_key, *(pki.client_key(n) for n in TENANTS)]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for p12 in (pki.client_p12(n) for n in TENANTS):
        assert stat.S_IMODE(p12.stat().st_mode) == 0o600, p12
    assert stat.S_IMODE(pki.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(pki.clients_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(pki.ca_cert.stat().st_mode) == 0o644


def test_certificate_contents(pki: PkiPaths) -> None:
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    client = x509.load_pem_x509_certificate(pki.client_cert("ops").read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert pki.ca_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted

    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca
    assert bc.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign
    assert ku.crl_sign
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value

    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]

    for leaf in (server, client):
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca_ski.digest
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)
        skew = leaf.not_valid_before_utc - dt.datetime.now(dt.UTC)
        assert dt.timedelta(minutes=-6) < skew < dt.timedelta(minutes=-4)

    san = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id("ops", "operator")]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.rfc4514_string() == "CN=ops"

    index = json.loads(pki.index.read_text())
    assert index["ops"] == {
        "serial": client.serial_number,
        "tenant": "ops",
        "role": "operator",
        "not_after": client.not_valid_after_utc.isoformat(),
        "revoked_at": None,
    }


def test_p12_bundle(pki: PkiPaths) -> None:
    bundle = pkcs12.load_pkcs12(pki.client_p12("acme").read_bytes(), None)
    cert = x509.load_pem_x509_certificate(pki.client_cert("acme").read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert bundle.key is not None
    assert bundle.cert is not None
    assert bundle.cert.certificate == cert
    assert bundle.cert.friendly_name == b"acme"
    assert bundle.key.public_key() == cert.public_key()
    assert [c.certificate for c in bundle.additional_certs] == [ca]


def test_empty_crl_after_init(pki: PkiPaths) -> None:
    crl = _crl(pki)
    assert len(crl) == 0
    assert _crl_number(pki) == 1
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_pub = ca.public_key()
    assert isinstance(ca_pub, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(ca_pub)


def test_errors(pki: PkiPaths, tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="role"):
        issue_client(pki, "x", tenant="acme", role="admin")
    for bad in ("", ".hidden", "../evil", "a/b", "a b", "x" * 65, "-x"):
        with pytest.raises(PkiError, match="name"):
            issue_client(pki, bad, tenant="acme", role="client")
    with pytest.raises(PkiError, match="tenant"):
        issue_client(pki, "x", tenant="ACME", role="client")
    with pytest.raises(PkiError, match="no client"):
        revoke_client(pki, "nobody")
    with pytest.raises(PkiError, match="CA"):
        issue_client(PkiPaths(tmp_path / "empty"), "x", tenant="acme", role="client")
    with pytest.raises(PkiError, match="role"):
        init_pki(PkiPaths(tmp_path / "other"), {"acme": "admin"})
    assert not (tmp_path / "other").exists()  # validated before anything was written


def test_init_refuses_orphaned_certificates(pki: PkiPaths) -> None:
    pki.ca_key.unlink()
    pki.ca_cert.unlink()
    with pytest.raises(PkiError, match="CA is missing"):
        init_pki(pki, TENANTS)


def test_init_refuses_half_pair(pki: PkiPaths) -> None:
    pki.server_key.unlink()
    with pytest.raises(PkiError, match=r"server\.key"):
        init_pki(pki, TENANTS)


def test_reissue_replaces_files_and_keeps_revocation_history(pki: PkiPaths) -> None:
    old_serial = revoke_client(pki, "acme")
    issue_client(pki, "acme", tenant="acme", role="client")
    new = x509.load_pem_x509_certificate(pki.client_cert("acme").read_bytes())
    assert new.serial_number != old_serial

    entry = json.loads(pki.index.read_text())["acme"]
    assert entry["serial"] == new.serial_number
    assert entry["revoked_at"] is None
    assert [r["serial"] for r in entry["superseded"]] == [old_serial]

    # Rebuilding the CRL from the index must not resurrect the old, revoked certificate.
    write_crl(pki)
    assert {r.serial_number for r in _crl(pki)} == {old_serial}


def test_revoke_is_idempotent(pki: PkiPaths) -> None:
    serial = revoke_client(pki, "globex")
    crl_bytes = pki.crl.read_bytes()
    revoked_at = json.loads(pki.index.read_text())["globex"]["revoked_at"]
    assert _crl_number(pki) == 2

    assert revoke_client(pki, "globex") == serial
    assert pki.crl.read_bytes() == crl_bytes
    assert json.loads(pki.index.read_text())["globex"]["revoked_at"] == revoked_at

    # If the CRL was lost after the index was written, revoking again repairs it.
    pki.crl.unlink()
    assert revoke_client(pki, "globex") == serial
    assert [r.serial_number for r in _crl(pki)] == [serial]

    crl = _crl(pki)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(days=365)


def test_init_resigns_stale_crl(pki: PkiPaths) -> None:
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    stale = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - dt.timedelta(days=360))
        .next_update(now + dt.timedelta(days=3))
        .add_extension(x509.CRLNumber(41), critical=False)
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(12345).revocation_date(now).build()
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki.crl.write_bytes(stale.public_bytes(serialization.Encoding.PEM))

    assert init_pki(pki, TENANTS) == [pki.crl]
    fresh = _crl(pki)
    assert [r.serial_number for r in fresh] == [12345]
    assert _crl_number(pki) == 42
    assert fresh.next_update_utc is not None
    assert fresh.next_update_utc - now > dt.timedelta(days=360)
    assert init_pki(pki, TENANTS) == []


# ------------------------------------------------------------------------------------ real mTLS + CRL


def _server_context(paths: PkiPaths) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(paths.server_cert, paths.server_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=paths.ca_cert)
    ctx.load_verify_locations(cafile=paths.crl)
    # STRICT as well: Python 3.13's defaults turn it on, and our certificates must survive it.
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT
    return ctx


def _client_context(server_ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=server_ca)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(cert, key)
    return ctx


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> dict[str, Any] | ssl.SSLError:
    """Run one TLS handshake over loopback TCP; return the server's view (peer cert or the error)."""
    result: list[dict[str, Any] | ssl.SSLError] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(5)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    peer = tls.getpeercert()
                    assert peer is not None
                    result.append(peer)
                    tls.sendall(b"ok")
            except ssl.SSLError as exc:
                result.append(exc)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                # Under TLS 1.3 the client finishes its handshake before the server has judged the
                # client certificate; the verdict only surfaces on the first read.
                tls.recv(2)
        except (ssl.SSLError, ConnectionError):
            pass
        finally:
            thread.join(5)
    assert len(result) == 1
    return result[0]


def test_mtls_handshake_with_crl(pki: PkiPaths, tmp_path: Path) -> None:
    def client(paths: PkiPaths, name: str) -> ssl.SSLContext:
        return _client_context(pki.ca_cert, paths.client_cert(name), paths.client_key(name))

    peer = _handshake(_server_context(pki), client(pki, "acme"))
    assert isinstance(peer, dict), peer
    assert ("URI", "spiffe://payhub.local/tenant/acme/role/client") in peer["subjectAltName"]

    revoke_client(pki, "acme")
    server = _server_context(pki)  # a new context picks up the rewritten CRL
    refused = _handshake(server, client(pki, "acme"))
    assert isinstance(refused, ssl.SSLCertVerificationError)
    assert refused.verify_code == 23  # X509_V_ERR_CERT_REVOKED
    peer = _handshake(server, client(pki, "globex"))
    assert isinstance(peer, dict), peer
    assert parse_spiffe_id(dict(peer["subjectAltName"])["URI"]) == ("globex", "client")

    foreign = PkiPaths(tmp_path / "foreign")
    init_pki(foreign, {"acme": "client"})
    refused = _handshake(server, client(foreign, "acme"))
    assert isinstance(refused, ssl.SSLCertVerificationError)
    assert refused.verify_code == 20  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY


def test_crl_check_without_crl_refuses_everyone(pki: PkiPaths) -> None:
    """Why init_pki always writes a CRL: under CRL_CHECK_LEAF a missing CRL locks every client out."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=pki.ca_cert)
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    refused = _handshake(ctx, _client_context(pki.ca_cert, pki.client_cert("acme"), pki.client_key("acme")))
    assert isinstance(refused, ssl.SSLCertVerificationError)
    assert refused.verify_code == 3  # X509_V_ERR_UNABLE_TO_GET_CRL
