"""Running the gateway: the API and ops listeners in one process, or N worker processes."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import shutil
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from config.settings import ConfigError, Settings, split_hostport
from connectors.sandbox.runner import start_sandbox
from crypto.pki import PkiPaths
from gateway.app import create_app, create_ops_app
from gateway.keys import CONFIG, METRICS, TLS
from gateway.logs import configure_logging, get_logger
from gateway.reload import ConfigReloader
from gateway.store.db import open_pool
from gateway.tls import HandshakeLimits, MtlsSite
from gateway.traffic import guarded_handler_factory

log = get_logger("gateway.server")

# After an answer sent before its request body ended (413, 408), aiohttp reads and drops what is
# still coming so the client can read the answer before the close; its default of 10 s lets a slow
# sender hold the connection that long.
LINGERING_TIME = 2.0


def check_pki(settings: Settings) -> PkiPaths:
    pki = PkiPaths(settings.pki_dir)
    missing = [p for p in (pki.ca_cert, pki.server_cert, pki.server_key, pki.crl) if not p.exists()]
    if missing:
        raise ConfigError(f"TLS material missing ({missing[0]}): run 'payhub pki init' first")
    return pki


@dataclass
class RunningGateway:
    """Both listeners of one process; ``stop()`` drains them."""

    api: web.Application
    api_site: MtlsSite
    ops_site: web.TCPSite
    runners: tuple[web.AppRunner, ...]

    @property
    def api_port(self) -> int:
        return self.api_site.port

    @property
    def ops_port(self) -> int:
        # asyncio.Server or uvloop's equivalent; both expose the bound sockets.
        server = cast(asyncio.Server, self.ops_site._server)
        return int(server.sockets[0].getsockname()[1])

    def reload(self) -> None:
        """SIGHUP: certificates and CRL, then the config file (tenants); each keeps its old state if bad."""
        self.api[TLS].reload(force=True)
        self.api[CONFIG].reload()

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


async def start_gateway(settings: Settings, *, reuse_port: bool = False) -> RunningGateway:
    """Migrate, open the pool and TLS material, and start both listeners."""
    check_pki(settings)
    api = create_app(settings)
    api[CONFIG] = ConfigReloader(settings)
    inputs = settings.limits.input
    handler_kwargs: dict[str, Any] = {
        "access_log": None,  # the context middleware logs through structlog instead
        "keepalive_timeout": settings.server.keepalive_timeout,
        "lingering_time": LINGERING_TIME,
        "max_line_size": inputs.max_line_size,
        "max_field_size": inputs.max_field_size,
        "max_headers": inputs.max_headers,
    }
    api_runner = web.AppRunner(api, shutdown_timeout=settings.server.shutdown_timeout, **handler_kwargs)
    await api_runner.setup()
    ops_runner = web.AppRunner(create_ops_app(api), access_log=None)
    await ops_runner.setup()
    running = False
    try:
        host, port = split_hostport(settings.server.listen, key="server.listen")
        api_site = MtlsSite(
            api_runner,
            host,
            port,
            tls=api[TLS],
            metrics=api[METRICS],
            limits=HandshakeLimits(timeout=settings.server.tls_handshake_timeout),
            reuse_port=reuse_port,
            protocol_factory=guarded_handler_factory(
                api_runner, head_timeout=inputs.header_timeout, metrics=api[METRICS], **handler_kwargs
            ),
        )
        await api_site.start()
        ops_host, ops_port = split_hostport(settings.server.ops_listen, key="server.ops_listen")
        ops_site = web.TCPSite(ops_runner, ops_host, ops_port, reuse_port=reuse_port or None)
        await ops_site.start()
        running = True
    finally:
        if not running:
            await ops_runner.cleanup()
            await api_runner.cleanup()
    return RunningGateway(api, api_site, ops_site, (ops_runner, api_runner))


async def _wait_for_stop(on_hup: Callable[[], object] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if on_hup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()


async def run_sandbox(settings: Settings) -> None:
    """The simulators alone, until SIGINT/SIGTERM (``payhub sandbox``)."""
    sandbox = await start_sandbox(settings)
    freeze_startup_heap()
    try:
        log.info("sandbox.ready", host=settings.sandbox.host)
        await _wait_for_stop()
    finally:
        await sandbox.close()


def sandbox_forever(settings: Settings) -> None:
    configure_logging(settings.server.log_level)
    run_loop(run_sandbox(settings))


async def serve(settings: Settings, *, reuse_port: bool = False, sandbox: bool = False) -> None:
    """Serve until SIGINT/SIGTERM. SIGHUP reloads certificates, the CRL and the tenants at once."""
    simulators = await start_sandbox(settings) if sandbox else None
    try:
        await _serve(settings, reuse_port=reuse_port)
    finally:
        if simulators is not None:
            await simulators.close()


def freeze_startup_heap() -> None:
    """Move what start-up built (modules, the app, compiled rules and codecs) out of the collector's reach.

    A full collection walks every tracked object, and start-up leaves about 100,000 that live as long as
    the process: a full collection under load stopped the event loop for 50 ms. Frozen, it walks only
    what came after: 10 ms (`gc.callbacks` timings during `make bench QUICK=1`, docs/performance.md).
    """
    gc.collect()
    gc.freeze()


async def _serve(settings: Settings, *, reuse_port: bool) -> None:
    gateway = await start_gateway(settings, reuse_port=reuse_port)
    freeze_startup_heap()
    try:
        log.info(
            "gateway.listening",
            api=gateway.api_site.name,
            ops=f"http://{settings.server.ops_listen}",
            pid=os.getpid(),
        )
        if settings.server.dev_mode and sys.stderr.isatty():
            # Only to a person at a terminal (`make run`): a log shipper reading the process's output
            # gets JSON lines only, and never the hint's test card number.
            print_try_me(settings, gateway.api_port)
        await _wait_for_stop(gateway.reload)
        log.info("gateway.stopping")
    finally:
        await gateway.stop()


def print_try_me(settings: Settings, port: int) -> None:
    """Dev mode at a terminal: a ready-to-paste curl line with a dev client certificate (on stderr)."""
    pki = PkiPaths(settings.pki_dir)
    tenant = next((t for t, conf in settings.tenants.items() if conf.role == "client"), None)
    if tenant is None or not pki.client_cert(tenant).exists():
        return
    host, _ = split_hostport(settings.server.listen, key="server.listen")
    host = "localhost" if host in ("127.0.0.1", "::1", "0.0.0.0", "::") else host  # noqa: S104
    tls = f"--cert {pki.client_cert(tenant)} --key {pki.client_key(tenant)} --cacert {pki.ca_cert}"
    payment = (
        '{"amount":12850,"currency":"CNY","payment_method":{"type":"card","card":'
        '{"number":"4111111111111111","exp_month":12,"exp_year":2030,"cvc":"123"}}}'
    )
    sys.stderr.write(
        "\npayhub is ready. Create a payment:\n\n"
        f"  curl {tls} \\\n"
        f'       -H "Idempotency-Key: $RANDOM$RANDOM" -H "Content-Type: application/json" \\\n'
        f"       -d '{payment}' \\\n"
        f"       https://{host}:{port}/v1/payments\n\n"
        f"  who am I:  curl {tls} https://{host}:{port}/v1/ping\n"
        f"  metrics:   curl http://{settings.server.ops_listen}/metrics\n\n"
    )
    sys.stderr.flush()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on uvloop when available (faster TLS and sockets), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _migrate_once(settings: Settings) -> None:
    async with open_pool(settings):
        pass


def _worker(settings: Settings) -> None:
    configure_logging(settings.server.log_level)
    run_loop(serve(settings, reuse_port=True))


def serve_forever(settings: Settings, workers: int = 1, *, sandbox: bool = False) -> None:
    configure_logging(settings.server.log_level)
    if workers <= 1:
        run_loop(serve(settings, sandbox=sandbox))
        return
    check_pki(settings)
    # Migrate once in the parent so workers do not queue on the migration lock at start-up.
    run_loop(_migrate_once(settings))
    metrics_dir = Path(settings.home) / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(settings,), name=f"payhub-worker-{i}") for i in range(workers)
    ]
    if sandbox:  # the simulators get a process of their own, shared by the workers
        processes.append(context.Process(target=sandbox_forever, args=(settings,), name="payhub-sandbox"))
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.pid is not None:
                os.kill(process.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    for process in processes:
        process.join()
    sys.exit(max((p.exitcode or 0) for p in processes))
