"""``payhub-client`` as a real subprocess against the real hub (configured by PAYHUB_* like curl)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from payhub_client import AsyncPayhub

from tests.sdk.sdk_stack import HubStack

SCRIPT = Path(sys.executable).parent / "payhub-client"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "payhub_client.cli"]
CARD = ["--card", "4111111111111111", "--exp", "12/2031", "--cvc", "123"]


def cli(stack: HubStack, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        env=stack.cli_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok_json(stack: HubStack, *args: str) -> Any:
    result = cli(stack, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_ping_with_variables_or_flags(hub_stack: HubStack) -> None:
    result = cli(hub_stack, "ping")
    assert result.returncode == 0, result.stderr
    assert "tenant acme" in result.stdout
    # Flags instead of variables, a PKCS#12 bundle instead of PEM files.
    bare = {k: v for k, v in hub_stack.cli_env().items() if not k.startswith("PAYHUB_")}
    p12 = str(hub_stack.pki.client_p12("globex"))
    flags = ["--url", hub_stack.url, "--p12", p12, "--cacert", str(hub_stack.pki.ca_cert)]
    assert json.loads(cli(hub_stack, "ping", *flags, "--json", env=bare).stdout)["tenant"] == "globex"
    assert cli(hub_stack, *flags, "ping", env=bare).returncode == 0  # options before the command too


def test_pay_and_list_payments(hub_stack: HubStack, unique: str) -> None:
    customer = f"cus_cli_{unique}"
    table = cli(hub_stack, "pay", "--amount", "12850", "--currency", "CNY", *CARD, "--customer", customer)
    assert table.returncode == 0, table.stderr
    assert "succeeded" in table.stdout and "128.50 CNY" in table.stdout
    paid = ok_json(hub_stack, "pay", "--amount", "990", "--currency", "CNY", *CARD, "--customer", customer)
    assert paid["status"] == "succeeded" and paid["id"].startswith("pay_")

    listed = ok_json(hub_stack, "payments", "list", "--customer", customer, "--limit", "5")
    assert [p["amount"] for p in listed] == [990, 12850]
    assert [
        p["id"] for p in ok_json(hub_stack, "payments", "list", "--customer", customer, "--limit", "1")
    ] == [paid["id"]]
    shown = cli(hub_stack, "payments", "get", paid["id"])
    assert paid["id"] in shown.stdout and "9.90 CNY" in shown.stdout

    refund = ok_json(hub_stack, "refund", paid["id"], "--amount", "90")
    assert (refund["status"], refund["amount"]) == ("succeeded", 90)


def test_bill_payment_and_progress_while_waiting(hub_stack: HubStack, unique: str) -> None:
    fetched = cli(hub_stack, "bills", "fetch", "bil_cn_water", "--param", f"account_number=32{unique[-8:]}")
    assert fetched.returncode == 0, fetched.stderr
    assert "bil_cn_water" in fetched.stdout and "CNY" in fetched.stdout
    # No --amount: the open bill's amount due is paid.
    bill = ok_json(
        hub_stack,
        "pay",
        "--bill",
        "bil_cn_water",
        "--param",
        f"account_number=32{unique[-8:]}",
        *CARD,
        "--wait",
    )
    assert bill["status"] == "succeeded" and bill["bill_posting"]["status"] == "posted"

    # A bank transfer stays processing until the bank's callback (about a second): --wait shows it.
    waited = cli(
        hub_stack, "pay", "--amount", "5000", "--currency", "CNY", "--bank", f"62{unique[-8:]}11", "--wait"
    )
    assert waited.returncode == 0, waited.stderr
    assert "processing" in waited.stderr  # the progress line
    assert "succeeded" in waited.stdout


def test_accounts_topup_billers_and_reminders(hub_stack: HubStack, unique: str) -> None:
    account = ok_json(hub_stack, "accounts", "create", "--currency", "CNY", "--customer", f"cus_cli_{unique}")
    topup = ok_json(hub_stack, "topup", account["id"], "--amount", "2000", "--currency", "CNY", *CARD)
    assert topup["destination"] == account["id"] and topup["status"] == "succeeded"
    assert ok_json(hub_stack, "accounts", "get", account["id"])["balance"]["available"] == 2000
    shown = cli(hub_stack, "accounts", "get", account["id"])
    assert "20.00 CNY" in shown.stdout
    assert len(ok_json(hub_stack, "accounts", "entries", account["id"])) >= 1

    billers = cli(hub_stack, "billers", "--category", "electricity")
    assert "bil_cn_power" in billers.stdout and "bil_cn_water" not in billers.stdout

    reminder = ok_json(
        hub_stack,
        "reminders",
        "create",
        "--type",
        "low_balance",
        "--account",
        account["id"],
        "--threshold",
        "500",
    )
    assert [r["id"] for r in ok_json(hub_stack, "reminders", "list", "--customer", f"cus_cli_{unique}")] == [
        reminder["id"]
    ]
    assert ok_json(hub_stack, "reminders", "delete", reminder["id"])["status"] == "deleted"


def test_errors_exit_non_zero_with_the_request_id(hub_stack: HubStack) -> None:
    result = cli(hub_stack, "pay", "--amount", "0", "--currency", "CNY", *CARD)
    assert result.returncode == 1
    assert "invalid_request_error/parameter_invalid" in result.stderr
    assert "param amount" in result.stderr
    assert "request id: req_" in result.stderr
    as_json = cli(hub_stack, "--json", "payments", "get", "pay_nothere")
    assert as_json.returncode == 1
    error = json.loads(as_json.stdout)["error"]
    assert (error["status"], error["code"]) == (404, "resource_missing") and error["request_id"].startswith(
        "req_"
    )

    declined = cli(
        hub_stack,
        "pay",
        "--amount",
        "100",
        "--currency",
        "CNY",
        "--card",
        "4000000000000002",
        "--exp",
        "12/31",
    )
    assert declined.returncode == 4 and "do_not_honor" in declined.stdout
    usage = cli(hub_stack, "pay", "--amount", "100", "--currency", "CNY")
    assert usage.returncode == 2 and "payment method" in usage.stderr
    env = hub_stack.cli_env() | {"PAYHUB_URL": "https://localhost:1"}
    down = cli(hub_stack, "--max-retries", "0", "ping", env=env)
    assert down.returncode == 3 and "cannot connect" in down.stderr


async def test_listen_receives_a_signed_event(hub_stack: HubStack, unique: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        "--json",
        "listen",
        "--register",
        "--events",
        "payment.succeeded",
        "--count",
        "1",
        env=hub_stack.cli_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None and process.stdout is not None
    try:
        registered = ""
        while "Ready" not in registered:
            line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
            assert line, f"listen exited early: {await process.stdout.read()!r}"
            registered += line
        endpoint = registered.split("Registered ", 1)[1].split()[0]
        async with AsyncPayhub(url=hub_stack.url, **hub_stack.tls()) as hub:
            payment = await hub.payments.create(
                amount=777,
                currency="CNY",
                payment_method={
                    "type": "card",
                    "card": {"number": "4111111111111111", "exp_month": 12, "exp_year": 2031},
                },
            )
            out, err = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 0, err
            event = json.loads(out.decode().splitlines()[0])
            assert event["type"] == "payment.succeeded" and event["data"]["object"]["id"] == payment.id
            # The endpoint it registered is gone once it stops.
            assert endpoint not in [e.id async for e in hub.webhook_endpoints.list()]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_listen_without_a_secret_says_how(hub_stack: HubStack) -> None:
    result = cli(hub_stack, "listen", "--port", "4999")
    assert result.returncode == 2
    assert "--register" in result.stderr and "/v1/webhook_endpoints" in result.stderr
