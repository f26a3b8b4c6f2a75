"""``payhub serve`` / ``payhub migrate`` as real processes, used the way an operator would."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson

from crypto.pki import PkiPaths
from gateway.store.embedded import with_database
from tests.support import postgres
from tests.support.mtls import client
from tests.support.processes import REPO, free_port, payhub_env, run_payhub, start_payhub, wait_ready

PAN = "4111111111111111"


async def test_serve_process_end_to_end(payhub_home: Path, db_url: str, tmp_path: Path) -> None:
    api_port, ops_port = free_port(), free_port()
    env = payhub_env(
        PAYHUB_HOME=str(payhub_home),
        PAYHUB_DATABASE_URL=db_url,
        PAYHUB_LISTEN=f"127.0.0.1:{api_port}",
        PAYHUB_OPS_LISTEN=f"127.0.0.1:{ops_port}",
    )
    log_file = tmp_path / "serve.log"
    process = start_payhub("serve", env=env, stdout=log_file)
    try:
        await wait_ready(ops_port)
        pki = PkiPaths(payhub_home / "pki")
        base = f"https://localhost:{api_port}"
        async with client(pki, "acme") as session:
            async with session.get(f"{base}/v1/ping") as resp:
                assert resp.status == 200
                assert (await resp.json())["tenant"] == "acme"
            # A careless client puts a PAN in the query string and the body: logs must not keep it.
            body = {"message": f"card {PAN} / 4111 1111 1111 1111 cvc 123"}
            async with session.post(f"{base}/v1/ping?card={PAN}", json=body) as resp:
                assert resp.status == 200
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{ops_port}/metrics") as resp:
                metrics = await resp.text()
            async with session.get(f"http://127.0.0.1:{ops_port}/healthz") as resp:
                assert resp.status == 200
        assert 'payhub_http_requests_total{method="GET",route="/v1/ping",status="200"} 1.0' in metrics
        process.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=20)
    assert exit_code == 0
    output = log_file.read_bytes()
    human = log_file.with_suffix(".err").read_text()
    # Not a terminal: no ready hint (it shows the sandbox test card), nothing but JSON on stdout.
    assert "payhub is ready" not in human and "curl --cert" not in human
    assert PAN not in human
    assert PAN.encode() not in output
    assert b"4111 1111 1111 1111" not in output
    events = [orjson.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    names = [e.get("event") for e in events]
    assert "gateway.listening" in names
    assert "tls.reloaded" in names  # SIGHUP
    assert "ping.message" in names
    access = [e for e in events if e.get("event") == "http.request"]
    assert len(access) == 2
    assert {e["tenant"] for e in access} == {"acme"}
    assert all(e["request_id"].startswith("req_") for e in access)


async def test_two_migrate_processes_at_once(pg_admin_url: str, payhub_home: Path) -> None:
    name = f"payhub_fresh_{time.monotonic_ns()}"
    conn_url = pg_admin_url
    await postgres._admin(conn_url, f'CREATE DATABASE "{name}"')
    try:
        env = payhub_env(PAYHUB_HOME=str(payhub_home), PAYHUB_DATABASE_URL=with_database(pg_admin_url, name))
        results = await asyncio.gather(
            asyncio.to_thread(run_payhub, "migrate", env=env),
            asyncio.to_thread(run_payhub, "migrate", env=env),
        )
        for result in results:
            assert result.returncode == 0, result.stdout + result.stderr
        again = run_payhub("migrate", env=env)
        assert again.returncode == 0
    finally:
        await postgres.drop_database_async(pg_admin_url, name)


def test_serve_without_pki_explains_what_to_do(tmp_path: Path) -> None:
    env = payhub_env(PAYHUB_HOME=str(tmp_path), PAYHUB_DATABASE_URL="postgresql://nobody@127.0.0.1:1/x")
    result = run_payhub("serve", env=env)
    assert result.returncode == 2
    assert "payhub pki init" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_config_fails_at_startup_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[database]\npool_max = "lots"\n[tenants.acme]\nrole = "client"\n')
    result = run_payhub("migrate", env=payhub_env(PAYHUB_CONFIG=str(config)))
    assert result.returncode == 2
    assert "database.pool_max" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_ready_hint_goes_to_a_terminal_only(payhub_home: Path, db_url: str) -> None:
    """At a terminal (as with `make run`) the dev-mode hint shows a ready-to-paste curl line."""
    api_port, ops_port = free_port(), free_port()
    env = payhub_env(
        PAYHUB_HOME=str(payhub_home),
        PAYHUB_DATABASE_URL=db_url,
        PAYHUB_LISTEN=f"127.0.0.1:{api_port}",
        PAYHUB_OPS_LISTEN=f"127.0.0.1:{ops_port}",
    )
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"who am I" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if ready:
                try:
                    seen += os.read(controller, 4096)
                except OSError:  # the process went away
                    break
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        os.close(controller)
    text = seen.decode(errors="replace")
    assert "payhub is ready" in text, text[-2000:]
    assert f"https://localhost:{api_port}/v1/payments" in text
