"""``payhub demo`` as a user runs it: its own process, a fresh state directory (embedded PostgreSQL,
dev PKI, sandbox and gateway on free ports), every step done, the table printed, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.processes import REPO


def test_demo_runs_every_step(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYHUB_")}
    env["PAYHUB_HOME"] = str(tmp_path / "home")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "demo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line[:1].isdigit() and "  " in line]
    assert len(rows) == 6 and all(" yes " in row for row in rows), done.stdout
    assert "6/6 steps did what they say" in done.stdout
    assert "4111111111111111" not in done.stdout + done.stderr
    assert elapsed < 60, f"the demo took {elapsed:.0f} s"
    log = (tmp_path / "home" / "demo" / "demo.log").read_text()
    assert log and all(line.startswith("{") for line in log.splitlines())  # JSON lines, in the log file
