"""Mutual TLS for the client API: context building, hot reload and the handshake acceptor.

Why the handshake is driven by hand: asyncio's built-in server-side TLS swallows handshake
failures (they reach neither the app nor the metrics), offers no cap on concurrent
handshakes and binds one SSLContext for the server's lifetime. Accepting sockets ourselves
and calling ``loop.connect_accepted_socket(ssl=...)`` per connection gives all three: every
failure surfaces as an exception and is counted by reason, a semaphore bounds handshakes in
progress, and each handshake uses the *current* context, so a rewritten CRL or certificate
applies to new connections at once. Connections opened before a revocation are refused per
request: the holder also keeps the CRL's revoked serials, which the identity middleware checks.
(``start_tls`` on an accepted transport is not usable: uvloop starts reading before the
protocol can be swapped, so the ClientHello could be lost.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from crypto.pki import PkiPaths
from gateway.logs import get_logger
from gateway.metrics import Metrics

log = get_logger("gateway.tls")

# Modern AEAD suites only for TLS 1.2; TLS 1.3 suites are fixed by OpenSSL and all strong.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def build_server_context(pki: PkiPaths) -> ssl.SSLContext:
    """A server context that requires a client certificate from our CA that is not revoked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Only the payhub client CA is trusted (never the system store), and its CRL is mandatory.
    ctx.load_verify_locations(cafile=pki.ca_cert)
    ctx.load_verify_locations(cafile=pki.crl)
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def load_revoked_serials(pki: PkiPaths) -> frozenset[int]:
    """The serials on the CRL, which must be signed by the CA (else ValueError, as for a bad file)."""
    crl = x509.load_pem_x509_crl(pki.crl.read_bytes())
    issuer = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()).public_key()
    if not crl.is_signature_valid(cast(CertificateIssuerPublicKeyTypes, issuer)):
        raise ValueError(f"{pki.crl} is not signed by {pki.ca_cert}")
    return frozenset(revoked.serial_number for revoked in crl)


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int], ...]:
    stamps = []
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            stamps.append((0, 0))
        else:
            stamps.append((st.st_mtime_ns, st.st_size))
    return tuple(stamps)


class TlsContextHolder:
    """Holds the current server context and revoked serials; rebuilds both when the PKI files change."""

    def __init__(self, pki: PkiPaths, metrics: Metrics) -> None:
        self._pki = pki
        self._metrics = metrics
        self._files = (pki.ca_cert, pki.crl, pki.server_cert, pki.server_key)
        self._stamp = _stamp(self._files)
        self.context = build_server_context(pki)
        self.revoked = load_revoked_serials(pki)

    def reload(self, *, force: bool = False) -> bool:
        """Rebuild if a file changed (or when forced); keep the old context if the new files are bad."""
        stamp = _stamp(self._files)
        if stamp == self._stamp and not force:
            return False
        try:
            context = build_server_context(self._pki)
            revoked = load_revoked_serials(self._pki)
        except (ssl.SSLError, OSError, ValueError) as exc:
            # A half-rotated set of files must not take the listener down: keep serving with the old one.
            self._metrics.tls_reloads.labels(outcome="error").inc()
            log.error(  # noqa: TRY400 - the reason is the useful part; no traceback
                "tls.reload_failed", error=type(exc).__name__, detail=str(exc)
            )
            return False
        # One assignment each, no await between: a request sees the old pair or the new one.
        self.context, self.revoked, self._stamp = context, revoked, stamp
        self._metrics.tls_reloads.labels(outcome="ok").inc()
        log.info("tls.reloaded", revoked=len(revoked))
        return True

    async def watch(self, interval: float) -> None:
        """Poll file stamps; cheap (four stat calls) and works on every filesystem, unlike inotify."""
        while True:
            await asyncio.sleep(interval)
            self.reload()


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason or "REVOKED" in reason:
            return "client_certificate"
        if "VERSION" in reason or "PROTOCOL" in reason or "CIPHER" in reason:
            return "protocol"
        return "tls_error"
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        return "timeout"
    return "connection_lost"


@dataclass(frozen=True)
class HandshakeLimits:
    timeout: float
    max_concurrent: int = 256


class MtlsSite(web.BaseSite):
    """An aiohttp site that accepts sockets itself and runs each TLS handshake (see module docstring)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        tls: TlsContextHolder,
        metrics: Metrics,
        limits: HandshakeLimits,
        reuse_port: bool = False,
        backlog: int = 1024,
        protocol_factory: Callable[[], asyncio.BaseProtocol] | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port
        # The HTTP protocol per connection; by default the runner's (see gateway.traffic.protocol).
        self._protocol_factory = protocol_factory
        self._tls, self._metrics, self._limits = tls, metrics, limits
        self._reuse_port = reuse_port
        self._slots = asyncio.Semaphore(limits.max_concurrent)
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        if self._listener is not None:
            return int(self._listener.getsockname()[1])
        return self._port

    async def start(self) -> None:
        await super().start()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.create_server(
            (self._host, self._port), family=family, backlog=self._backlog, reuse_port=self._reuse_port
        )
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept_loop(listener), name=f"accept {self.name}")

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._listener is not None:
            self._listener.close()
        for task in list(self._handshakes):
            task.cancel()
        await super().stop()

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _address = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("tls.accept_failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            if self._slots.locked():
                # Saturated by handshakes (a flood): refuse at once rather than queue without bound.
                self._metrics.tls_handshake_failures.labels(reason="overload").inc()
                conn.close()
                continue
            task = asyncio.create_task(self._handshake(conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        async with self._slots:
            try:
                # The handshake completes (or fails) before the HTTP protocol sees the connection.
                await loop.connect_accepted_socket(
                    self._protocol_factory or server,
                    conn,
                    ssl=self._tls.context,
                    ssl_handshake_timeout=self._limits.timeout,
                )
            except asyncio.CancelledError:
                conn.close()
                raise
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                reason = _failure_reason(exc)
                self._metrics.tls_handshake_failures.labels(reason=reason).inc()
                log.info("tls.handshake_failed", reason=reason, detail=str(exc)[:200])
                conn.close()
                return
        self._metrics.tls_handshakes.inc()
