"""``payhub recon run`` as an operator runs it: against a real `payhub sandbox` process."""

from __future__ import annotations

import asyncio
import signal
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support.processes import config_with_free_sandbox_ports, payhub_env, run_payhub, start_payhub


async def listening(port: int, deadline: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise AssertionError(f"nothing listens on {port}")


async def test_recon_run_prints_counts_per_biller_and_in_total(
    payhub_home: Path, db_url: str, tmp_path: Path
) -> None:
    config = config_with_free_sandbox_ports(tmp_path)
    env = payhub_env(PAYHUB_HOME=str(payhub_home), PAYHUB_DATABASE_URL=db_url, PAYHUB_CONFIG=str(config))
    sandbox = start_payhub("sandbox", env=env, stdout=tmp_path / "sandbox.log")
    try:
        await listening(tomllib.loads(config.read_text())["sandbox"]["utility"])
        day = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()  # closed everywhere
        result = await asyncio.to_thread(
            run_payhub, "recon", "run", "--date", day, "--connector", "utility_biller", env=env
        )
    finally:
        sandbox.send_signal(signal.SIGTERM)
        sandbox.wait(timeout=20)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(day)]
    assert len(lines) == 6  # the utility biller's six billers
    assert all("matched 0, mismatched 0, missing at hub 0, missing at biller 0" in line for line in lines)
    assert "total: matched 0" in result.stdout
    assert "Traceback" not in result.stderr
