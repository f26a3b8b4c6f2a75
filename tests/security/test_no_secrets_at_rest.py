"""Real payments with test PANs and CVCs through a real `payhub serve`, a key rotation while it
serves, then a scan of every log line, every event and a full pg_dump: no PAN, no CVC in clear."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from crypto.pki import PkiPaths
from tests.support.api import api_client, card_payment
from tests.support.processes import (
    config_with_free_sandbox_ports,
    free_port,
    payhub_env,
    run_payhub,
    start_payhub,
    wait_ready,
)

PANS = ["4111111111111111", "5555555555554444", "6212345678901265", "4000000000000002", "4000000000009995"]
# Leading zeros: a number in the dump (an amount, a velocity counter's sum) is never written with
# one, so a match here is a CVC, not a total that happens to share its digits.
CVCS = ["0937", "0826", "0715", "0483", "0591"]


def pg_dump_binary() -> str:
    import pgserver

    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"
    if bundled.exists():  # PostgreSQL 16 client tools: dump 16 and older servers alike
        return str(bundled)
    found = shutil.which("pg_dump")
    if found is None:
        pytest.fail("no pg_dump available (neither pgserver's nor the system's)")
    return found


async def test_no_pan_or_cvc_in_logs_events_or_database(
    payhub_home: Path, db_url: str, tmp_path: Path
) -> None:
    api_port, ops_port = free_port(), free_port()
    env = payhub_env(
        PAYHUB_HOME=str(payhub_home),
        PAYHUB_DATABASE_URL=db_url,
        PAYHUB_LISTEN=f"127.0.0.1:{api_port}",
        PAYHUB_OPS_LISTEN=f"127.0.0.1:{ops_port}",
        PAYHUB_CONFIG=str(config_with_free_sandbox_ports(tmp_path)),
    )
    log_file = tmp_path / "serve.log"
    # The dev routing: cards go over ISO 8583 to the sandbox acquirer, run in the same process.
    process = start_payhub("serve", "--sandbox", env=env, stdout=log_file)
    pki = PkiPaths(payhub_home / "pki")
    try:
        await wait_ready(ops_port)
        async with api_client(pki, "acme", api_port) as api:
            tokens = []
            for pan, cvc in zip(PANS, CVCS, strict=True):
                body = card_payment(pan)
                body["payment_method"]["card"]["cvc"] = cvc
                reply = await api.post("/v1/payments", body)
                assert reply.status == 200, reply.body
                assert reply.body["connector"] == "iso8583_card"  # the PAN really crossed the wire
                manual = await api.post("/v1/payments", {**body, "capture_method": "manual"})
                if manual.body["status"] == "requires_capture":
                    await api.post(f"/v1/payments/{manual.body['id']}/capture", {})
                    await api.post("/v1/refunds", {"payment": manual.body["id"], "amount": 100})
                token = await api.post(
                    "/v1/tokens",
                    {"card": {"number": pan, "exp_month": 3, "exp_year": 2032, "cvc": cvc}},
                    key=None,
                )
                tokens.append(token.body["id"])
            # A careless client puts a PAN where it does not belong: refused, nothing stored.
            careless = await api.post("/v1/payments", card_payment(description=f"card {PANS[0]}"))
            assert (careless.status, careless.body["error"]["param"]) == (400, "description")
            careless = await api.post("/v1/payments", card_payment(metadata={"note": PANS[1]}))
            assert (careless.status, careless.body["error"]["param"]) == (400, "metadata.note")
            assert PANS[1] not in careless.body["error"]["message"]

            # Rotate the data key while the gateway serves; cards vaulted before stay usable.
            rotated = await asyncio.to_thread(run_payhub, "keys", "rotate", env=env)
            assert rotated.returncode == 0, rotated.stderr
            assert "new pan key version" in rotated.stdout
            for token in tokens[:3]:
                pay = await api.post(
                    "/v1/payments",
                    {
                        "amount": 100,
                        "currency": "CNY",
                        "payment_method": {"type": "card", "card": {"token": token}},
                    },
                )
                assert pay.body["status"] == "succeeded", pay.body
            fresh = await api.post("/v1/payments", card_payment("4111111111111111", amount=777))
            assert fresh.body["status"] == "succeeded"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)

    dumped = await asyncio.to_thread(
        subprocess.run,
        [pg_dump_binary(), "--data-only", "--no-owner", db_url],
        capture_output=True,
        check=True,
        timeout=60,
    )
    dump = dumped.stdout
    assert b"card_tokens" in dump and b"payments" in dump  # the dump really holds the data
    # stdout and stderr whole: the dev-mode hint (which shows a test card) goes to a terminal only.
    logs = log_file.read_bytes() + log_file.with_suffix(".err").read_bytes()
    for name, blob in (("logs", logs), ("pg_dump", dump)):
        for pan in PANS:
            assert pan.encode() not in blob, f"{name} holds a full PAN"
            spaced = " ".join(pan[i : i + 4] for i in range(0, 16, 4))
            assert spaced.encode() not in blob, f"{name} holds a full PAN (spaced)"
        assert b'"cvc"' not in blob, f"{name} holds a cvc field"
        for cvc in CVCS:
            assert not re.search(rb"(?<![0-9a-f])" + cvc.encode() + rb"(?![0-9a-f])", blob), (
                f"{name} holds a CVC"
            )
    assert b"data_keys" in dump
