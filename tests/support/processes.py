"""Run payhub as a real child process for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def payhub_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYHUB_")}
    env.update(overrides)
    return env


def run_payhub(*args: str, env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_payhub(*args: str, env: Mapping[str, str], stdout: Path) -> subprocess.Popen[bytes]:
    """Start payhub with its stdout (the JSON log) in ``stdout`` and stderr next to it (``.err``)."""
    with stdout.open("wb") as out, stdout.with_suffix(".err").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            cwd=REPO,
            env=dict(env),
            stdout=out,
            stderr=err,
        )


SANDBOX_SERVICES = ("acquirer", "utility", "telecom", "bank", "ewallet", "fx", "messages", "books")


def config_with_free_sandbox_ports(directory: Path) -> Path:
    """A copy of the dev config whose [sandbox] simulators listen on free ports (for `serve --sandbox`)."""
    text = (REPO / "config" / "payhub.toml").read_text()
    for service in SANDBOX_SERVICES:
        text = re.sub(rf"(?m)^{service} = \d+", f"{service} = {free_port()}", text, count=1)
    path = directory / "payhub-sandbox.toml"
    path.write_text(text)
    return path


async def wait_ready(ops_port: int, deadline: float = 60.0) -> None:
    """Until a ``payhub serve`` process answers /readyz on its ops port."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{ops_port}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail("gateway did not become ready")
