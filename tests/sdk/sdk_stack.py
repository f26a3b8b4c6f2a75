"""A real hub for the SDK and CLI tests: ``payhub sandbox`` and ``payhub serve`` as child processes.

The simulators run in their own process (not ``serve --sandbox``) so that the gateway can be killed
with SIGKILL and started again while the acquirer keeps its books: the retry test proves a charge
happened once. One stack serves the ``tests/sdk`` package; each test uses its own customers.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from crypto.pki import PkiPaths
from tests.support.processes import config_with_free_sandbox_ports, free_port, payhub_env, start_payhub

READY_DEADLINE = 60.0
# The tests pay with the same few sandbox cards many times a minute: the velocity rules would hold
# those payments. They run in shadow mode; the step-up rule (new device, >= 2,000 USD) stays on.
SHADOWED_RULES = ("card_testing", "velocity_card_burst", "topup_burst")


def sdk_config(directory: Path) -> Path:
    path = config_with_free_sandbox_ports(directory)
    text = path.read_text()
    for rule in SHADOWED_RULES:
        text, found = re.subn(rf'(?m)^id = "{rule}"$', f'id = "{rule}"\nmode = "shadow"', text, count=1)
        if not found:
            raise RuntimeError(f"{path}: no risk rule {rule}")
    path.write_text(text)
    return path


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class HubStack:
    home: Path
    db_url: str
    workdir: Path
    config: Path = field(init=False)
    ports: dict[str, int] = field(init=False)
    api_port: int = field(default_factory=free_port)
    ops_port: int = field(default_factory=free_port)
    sandbox: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    incarnation: int = 0

    def __post_init__(self) -> None:
        self.config = sdk_config(self.workdir)
        section = self.config.read_text().partition("\n[sandbox]\n")[2].partition("\n[")[0]
        self.ports = {m[1]: int(m[2]) for m in re.finditer(r"(?m)^([a-z]+) = (\d+)", section)}

    # ---- what clients need ----

    @property
    def url(self) -> str:
        return f"https://localhost:{self.api_port}"

    @property
    def pki(self) -> PkiPaths:
        return PkiPaths(self.home / "pki")

    def tls(self, tenant: str = "acme") -> dict[str, str]:
        return {
            "cert": str(self.pki.client_cert(tenant)),
            "key": str(self.pki.client_key(tenant)),
            "cacert": str(self.pki.ca_cert),
        }

    def cli_env(self, tenant: str = "acme") -> dict[str, str]:
        tls = self.tls(tenant)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYHUB_")}
        env |= {
            "PAYHUB_URL": self.url,
            "PAYHUB_CERT": tls["cert"],
            "PAYHUB_KEY": tls["key"],
            "PAYHUB_CACERT": tls["cacert"],
        }
        return env

    def sandbox_url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def get_json(self, service: str, path: str) -> Any:
        with urllib.request.urlopen(self.sandbox_url(service, path), timeout=10) as resp:
            return orjson.loads(resp.read())

    def books(self) -> dict[str, Any]:
        books: dict[str, Any] = self.get_json("books", "/books")
        return books

    async def otp_for(self, phone: str, *, after: int = 0, deadline: float = 15.0) -> str:
        """The newest 6-digit code sent to ``phone`` by SMS (beyond the first ``after`` messages)."""
        started = time.monotonic()
        query = urllib.request.quote(phone)
        while time.monotonic() - started < deadline:
            messages = await asyncio.to_thread(self.get_json, "messages", f"/messages?to={query}")
            codes = [
                m[0]
                for msg in messages[after:]
                if msg.get("channel") == "sms"
                for m in [re.findall(r"\b([0-9]{6})\b", msg.get("body", ""))]
                if m
            ]
            if codes:
                return str(codes[-1])
            await asyncio.sleep(0.2)
        raise AssertionError(f"no OTP message to {phone}")

    # ---- processes ----

    def _env(self, **extra: str) -> dict[str, str]:
        return payhub_env(PAYHUB_CONFIG=str(self.config), PAYHUB_HOME=str(self.home), **extra)

    def start(self) -> None:
        log = self.workdir / "sandbox.log"
        self.sandbox = start_payhub("sandbox", env=self._env(), stdout=log)
        self._until(
            lambda: _http_ok(self.sandbox_url("books", "/books")), self.sandbox, log, "payhub sandbox"
        )
        self.start_gateway()

    def start_gateway(self) -> None:
        self.incarnation += 1
        log = self.workdir / f"gateway-{self.incarnation}.log"
        env = self._env(
            PAYHUB_DATABASE_URL=self.db_url,
            PAYHUB_LISTEN=f"127.0.0.1:{self.api_port}",
            PAYHUB_OPS_LISTEN=f"127.0.0.1:{self.ops_port}",
        )
        self.gateway = start_payhub("serve", env=env, stdout=log)
        self._until(
            lambda: _http_ok(f"http://127.0.0.1:{self.ops_port}/readyz"), self.gateway, log, "payhub serve"
        )

    def kill_gateway(self) -> None:
        """kill -9: requests in flight are cut where they stand."""
        assert self.gateway is not None
        if self.gateway.poll() is None:
            os.kill(self.gateway.pid, signal.SIGKILL)
        self.gateway.wait(timeout=10)

    def _until(self, probe: Any, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
        started = time.monotonic()
        while time.monotonic() - started < READY_DEADLINE:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{what} exited with {process.returncode}:\n{_tail(log.with_suffix('.err'))}"
                )
            if probe():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{what} not ready after {READY_DEADLINE} s:\n{_tail(log.with_suffix('.err'))}")

    def stop(self) -> None:
        for process in (self.gateway, self.sandbox):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (self.gateway, self.sandbox):
            if process is None:
                continue
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
