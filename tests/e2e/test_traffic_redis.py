"""Two real ``payhub serve`` processes on one database and one Redis enforce one shared budget."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp

from crypto.pki import PkiPaths
from tests.support.mtls import client
from tests.support.processes import free_port, payhub_env, start_payhub, wait_ready
from tests.support.traffic import REDIS_URL, config_with_limits, needs_redis, unique_prefix

BUDGET = 25


@needs_redis
async def test_two_gateway_processes_share_one_redis_budget(
    payhub_home: Path, db_url: str, tmp_path: Path
) -> None:
    assert REDIS_URL is not None
    config = tmp_path / "payhub.toml"
    config.write_text(
        config_with_limits(
            f"""
            [limits]
            redis_key_prefix = "{unique_prefix()}"
            [limits.per_tenant]
            default = "{BUDGET}/minute"
            """.replace("\n            ", "\n")
        )
    )
    ports = [(free_port(), free_port()) for _ in range(2)]
    processes = []
    try:
        for n, (api_port, ops_port) in enumerate(ports):  # one after the other: shared PAYHUB_HOME
            env = payhub_env(
                PAYHUB_CONFIG=str(config),
                PAYHUB_HOME=str(payhub_home),
                PAYHUB_DATABASE_URL=db_url,
                PAYHUB_REDIS_URL=REDIS_URL,
                PAYHUB_LISTEN=f"127.0.0.1:{api_port}",
                PAYHUB_OPS_LISTEN=f"127.0.0.1:{ops_port}",
            )
            processes.append(start_payhub("serve", env=env, stdout=tmp_path / f"serve-{n}.log"))
            await wait_ready(ops_port)

        pki = PkiPaths(payhub_home / "pki")

        async def hammer(session: aiohttp.ClientSession, api_port: int, n: int) -> list[int]:
            got = []
            for _ in range(n):
                async with session.get(f"https://localhost:{api_port}/v1/ping") as resp:
                    got.append(resp.status)
            return got

        async with client(pki, "acme") as first, client(pki, "acme") as second:
            results = await asyncio.gather(hammer(first, ports[0][0], 30), hammer(second, ports[1][0], 30))
        accepted = sum(status == 200 for statuses in results for status in statuses)
        refused = sum(status == 429 for statuses in results for status in statuses)
        assert accepted == BUDGET  # one budget, not one per process
        assert refused == 60 - BUDGET
        assert all(200 in statuses for statuses in results)  # both processes served part of it

        async with client(pki, "globex") as globex:  # another tenant's budget is untouched
            assert await hammer(globex, ports[1][0], 3) == [200] * 3
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            assert process.wait(timeout=20) == 0
