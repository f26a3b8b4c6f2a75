"""Config reload (SIGHUP): a tenant disabled or removed in the file is refused on its next request,
on connections opened before the reload too; a bad file changes nothing (DESIGN §5)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import msgspec

from config.settings import Settings
from crypto.pki import PkiPaths
from gateway.keys import CONFIG
from tests.support.keepalive import KeepAlive, RawReply, keepalive
from tests.support.mtls import client_context, gateway
from tests.support.processes import REPO, free_port, payhub_env, start_payhub, wait_ready

DEV_CONFIG = (REPO / "config" / "payhub.toml").read_text()
GLOBEX = '[tenants.globex]\nrole = "client"\n'
assert GLOBEX in DEV_CONFIG


async def refusal_on(conn: KeepAlive, deadline: float = 5.0) -> tuple[RawReply, float]:
    """Ping on ``conn`` until it is refused (the signal is handled asynchronously): (reply, seconds)."""
    started = time.perf_counter()
    while time.perf_counter() - started < deadline:
        reply = await conn.get("/v1/ping")
        if reply.status != 200:
            return reply, time.perf_counter() - started
        await asyncio.sleep(0.001)
    raise AssertionError(f"still accepted {deadline} s after the reload")


def assert_refused_and_closed_later(reply: RawReply, why: str) -> None:
    assert reply.status == 403
    assert reply.body["error"]["type"] == "authentication_error"
    assert why in reply.body["error"]["message"]
    assert reply.headers["connection"] == "close"


def logged(log_file: Path, event: str) -> int:
    return log_file.read_text().count(f'"{event}"')


async def hup(process: subprocess.Popen[bytes], log_file: Path, event: str) -> None:
    """SIGHUP, then wait until the process logged ``event`` once more."""
    before = logged(log_file, event)
    process.send_signal(signal.SIGHUP)
    started = time.monotonic()
    while logged(log_file, event) == before:
        assert time.monotonic() - started < 5, f"no new {event} in the log"
        await asyncio.sleep(0.02)


async def test_sighup_disables_a_tenant_on_its_open_connection(
    payhub_home: Path, db_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "payhub.toml"
    config.write_text(DEV_CONFIG)
    api_port, ops_port = free_port(), free_port()
    env = payhub_env(
        PAYHUB_CONFIG=str(config),
        PAYHUB_HOME=str(payhub_home),
        PAYHUB_DATABASE_URL=db_url,
        PAYHUB_LISTEN=f"127.0.0.1:{api_port}",
        PAYHUB_OPS_LISTEN=f"127.0.0.1:{ops_port}",
    )
    log_file = tmp_path / "serve.log"
    process = start_payhub("serve", env=env, stdout=log_file)
    pki = PkiPaths(payhub_home / "pki")
    try:
        await wait_ready(ops_port)
        async with (
            keepalive(api_port, client_context(pki, "globex")) as globex,
            keepalive(api_port, client_context(pki, "acme")) as acme,
        ):
            assert (await globex.get("/v1/ping")).status == 200
            config.write_text(DEV_CONFIG.replace(GLOBEX, GLOBEX + "enabled = false\n"))
            process.send_signal(signal.SIGHUP)
            reply, seconds = await refusal_on(globex)
            print(f"\ntenant disabled: refused {seconds * 1000:.1f} ms after SIGHUP, on the open connection")
            assert_refused_and_closed_later(reply, "disabled")
            assert await globex.closed_by_server()
            assert (await acme.get("/v1/ping")).status == 200  # the other tenant carries on

            # A broken file is refused as a whole: the table in force stays (globex still off).
            config.write_text(DEV_CONFIG + "\n[tenants.acme\n")
            await hup(process, log_file, "config.reload_failed")
            assert (await acme.get("/v1/ping")).status == 200
        async with keepalive(api_port, client_context(pki, "globex")) as globex:
            assert_refused_and_closed_later(await globex.get("/v1/ping"), "disabled")

        # Enabled again: back on its next connection, without a restart.
        config.write_text(DEV_CONFIG)
        await hup(process, log_file, "config.reloaded")
        async with keepalive(api_port, client_context(pki, "globex")) as globex:
            assert (await globex.get("/v1/ping")).status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=20)
    assert exit_code == 0
    assert "Traceback" not in log_file.with_suffix(".err").read_text()


async def test_a_removed_tenant_is_refused_and_the_rest_of_the_settings_stay(
    settings: Settings, pki: PkiPaths, tmp_path: Path
) -> None:
    """In process: the reload hook SIGHUP calls, with acme deleted from the file."""
    config = tmp_path / "payhub.toml"
    config.write_text(DEV_CONFIG)
    settings = msgspec.structs.replace(settings, source=str(config))
    async with gateway(settings) as gw, keepalive(gw.api_port, client_context(pki, "acme")) as acme:
        assert (await acme.get("/v1/ping")).status == 200
        config.write_text(DEV_CONFIG.replace("[tenants.acme]", "[tenants.acme-gone]"))
        gw.reload()
        assert_refused_and_closed_later(await acme.get("/v1/ping"), "unknown")
        assert await acme.closed_by_server()
        current = gw.api[CONFIG].current
        assert "acme" not in current.tenants
        # Only the tenants and the risk rules were taken from the file: the test's listen address,
        # database and routing stay.
        assert msgspec.structs.replace(current, tenants=settings.tenants, risk=settings.risk) == settings
