"""A real ``payhub serve --sandbox`` for the fuzzer: its own database, no rate limits, no shedding.

The gateway runs as a child process, as an operator runs it, so a request the fuzzer sends goes
through the same TLS listener, middlewares and connectors (the sandbox simulators) as production
traffic. Its JSON log is kept: a 500's ``request_id`` leads to the exception behind it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crypto.pki import PkiPaths
from gateway.store.embedded import with_database
from tests.support import postgres
from tests.support.processes import (
    config_with_free_sandbox_ports,
    free_port,
    payhub_env,
    start_payhub,
    wait_ready,
)

TENANT = "acme"
OPERATOR = "ops"
UNLIMITED = "unlimited"
STOP_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class Profile:
    """How much fuzzing: ``fast`` for ``make test``, ``long`` for ``make verify``."""

    name: str
    examples: int  # hypothesis examples per operation and generation mode (positive, negative)
    coverage: bool  # schemathesis' deterministic boundary cases (every operation, both modes)
    scenarios: int  # stateful phase: state machine runs
    steps: int  # stateful phase: at most this many calls per run


PROFILES = {
    "fast": Profile("fast", examples=30, coverage=False, scenarios=25, steps=10),
    "long": Profile("long", examples=200, coverage=True, scenarios=300, steps=15),
}


@pytest.fixture(scope="session")
def profile() -> Profile:
    name = os.environ.get("PAYHUB_FUZZ_PROFILE", "fast")
    if name not in PROFILES:
        raise pytest.UsageError(f"PAYHUB_FUZZ_PROFILE={name!r}: use one of {', '.join(PROFILES)}")
    return PROFILES[name]


@dataclass(frozen=True, slots=True)
class LiveGateway:
    base_url: str
    ca: str
    cert: str
    key: str
    log: Path  # the gateway's JSON log (stdout); stderr is next to it (.err)
    operator_cert: str = ""  # the ops tenant's certificate, for the operator routes
    operator_key: str = ""


def fuzz_config(directory: Path) -> Path:
    """The dev config (free sandbox ports) with every rate limit lifted and no load shedding: the
    fuzzer tests what each route answers, not traffic protection (tests/e2e/test_traffic_*.py),
    and on a busy 2-core box 429s and 503s would otherwise hide most answers."""
    path = config_with_free_sandbox_ports(directory)
    text = path.read_text()
    for key in ("per_customer", "per_customer_ip", "payment_write", "default"):
        text, found = re.subn(rf'(?m)^{key} = "[^"]*"', f'{key} = "{UNLIMITED}"', text, count=1)
        if not found:
            raise RuntimeError(f"{path}: no `{key} = ...` limit to lift")
    text, found = re.subn(r"(?ms)(^\[limits\.shedding\][^\[]*?^enabled = )true", r"\g<1>false", text, count=1)
    if not found:
        raise RuntimeError(f"{path}: no [limits.shedding] enabled = true to turn off")
    path.write_text(text)
    return path


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture(scope="module")
def live_gateway(
    pg_admin_url: str, pg_template: str, payhub_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveGateway]:
    workdir = tmp_path_factory.mktemp("fuzz")
    database = asyncio.run(postgres.clone_database(pg_admin_url, pg_template))
    api_port, ops_port = free_port(), free_port()
    env = payhub_env(
        PAYHUB_CONFIG=str(fuzz_config(workdir)),
        PAYHUB_HOME=str(payhub_home),
        PAYHUB_DATABASE_URL=with_database(pg_admin_url, database),
        PAYHUB_LISTEN=f"127.0.0.1:{api_port}",
        PAYHUB_OPS_LISTEN=f"127.0.0.1:{ops_port}",
    )
    log = workdir / "serve.log"
    process = start_payhub("serve", "--sandbox", env=env, stdout=log)
    try:
        asyncio.run(wait_ready(ops_port))
        pki = PkiPaths(payhub_home / "pki")
        yield LiveGateway(
            base_url=f"https://localhost:{api_port}",
            ca=str(pki.ca_cert),
            cert=str(pki.client_cert(TENANT)),
            key=str(pki.client_key(TENANT)),
            log=log,
            operator_cert=str(pki.client_cert(OPERATOR)),
            operator_key=str(pki.client_key(OPERATOR)),
        )
    finally:
        _stop(process)
        postgres.drop_database(pg_admin_url, database)
