"""Real processes and a recording client for the conservation checker.

* :class:`Stack` runs ``payhub sandbox`` and ``payhub serve`` (without ``--sandbox``) as child
  processes on free ports, kills the gateway with SIGKILL and starts it again.
* :class:`Client` talks to the gateway over mutual TLS (the ``acme`` certificate). Every try of every
  request is recorded in :class:`History`; a request that got no answer (the gateway was down) or
  ``409 request_in_progress`` is retried with its same Idempotency-Key and the same body bytes until it
  gets an answer; so is ``429`` (rate limited: refused before any processing, retried after a second,
  as a client app would).
* :class:`Sandbox` reads the simulators' books (``GET /books``) and plays the wallet's payer.

Everything is async on one event loop that the state machine owns (:class:`Loop`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson

from crypto.pki import PkiPaths
from tests.support.faultproxy import ProxyThread, ThreadedProxy
from tests.support.mtls import client_context
from tests.support.processes import config_with_free_sandbox_ports, free_port, payhub_env, start_payhub

T = TypeVar("T")

# Connector time-outs shorter than the dev defaults (10 s) so that a run fits its time budget. The
# sandbox derives its slow answers from the same config (a 7777 utility account answers 2 s after the
# connector's read time-out); the slow test card (3 s) stays below the card read time-out.
CARD_READ_TIMEOUT = 4.0
UTILITY_READ_TIMEOUT = 2.0
REQUEST_TIMEOUT = 45.0  # one try; longer than any connector time-out plus a reversal
RETRY_DEADLINE = 75.0  # a request still unanswered after this long is reported as stuck
READY_DEADLINE = 60.0
# The links the gateway reaches through a fault proxy (tests.support.faultproxy): sandbox service →
# (its connector, how the connector's ``endpoint`` names the proxy).
PROXIED: dict[str, tuple[str, str]] = {
    "acquirer": ("iso8583_card", "127.0.0.1:{port}"),
    "utility": ("utility_biller", "http://127.0.0.1:{port}"),
    "bank": ("bank_transfer", "http://127.0.0.1:{port}"),
}
# A fault opens a proxied connector's circuit breaker; a short reset lets the first call after the
# fault be the half-open trial, so the rules after a fault see the documented outcomes again.
BREAKER_RESET = 1.0


class Loop:
    """The one event loop everything runs on (hypothesis' stateful API is synchronous)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


# ---- processes ---------------------------------------------------------------------------------


UNLIMITED = "unlimited"


def _set_key(text: str, section: str, key: str, value: str) -> str:
    """``key = value`` in TOML table ``[section]`` (added at the end if the table is missing)."""
    header = f"[{section}]"
    if not re.search(rf"(?m)^{re.escape(header)}$", text):
        return text + f"\n{header}\n{key} = {value}\n"
    body = text.partition(f"\n{header}\n")[2].partition("\n[")[0]
    if re.search(rf"(?m)^{key} = ", body):
        raise RuntimeError(f"[{section}] {key} is set already; the checker would not override it")
    return re.sub(rf"(?m)^{re.escape(header)}$", f"{header}\n{key} = {value}", text, count=1)


def prepare_config(directory: Path, proxies: dict[str, int] | None = None) -> Path:
    """The dev config with free sandbox ports (books included), shorter connector time-outs and no
    rate limits; ``proxies`` (sandbox service → port of its fault proxy) redirect those links."""
    path = config_with_free_sandbox_ports(directory)
    text = path.read_text()
    if not re.search(r"(?m)^books = \d+", text):
        raise RuntimeError(f"{path}: no [sandbox] books port; the checker needs GET /books")
    text = re.sub(
        r"(?ms)(^\[connectors\.utility_biller\].*?^read_timeout = )[0-9.]+",
        rf"\g<1>{UTILITY_READ_TIMEOUT}",
        text,
        count=1,
    )
    # The checker tests money, not traffic protection: a long run makes hundreds of payments for a
    # handful of customers, which the dev limits (120 per customer per minute) would refuse.
    for key in ("per_customer", "per_customer_ip", "payment_write", "default"):
        text = re.sub(rf'(?m)^{key} = "[^"]*"', f'{key} = "{UNLIMITED}"', text, count=1)
    # Risk: the velocity rules would hold most of the checker's payments (a few cards and customers,
    # hundreds of payments); they run in shadow mode here and tests/e2e/test_risk.py covers them.
    # Two customers are held on purpose, so that step-up and review are on the money path the checker
    # proves: every payment of cus_model_challenge is challenged, every one of cus_model_review reviewed.
    for rule in ("card_testing", "topup_burst", "velocity_card_burst"):
        text, found = re.subn(rf'(?m)^id = "{rule}"$', f'id = "{rule}"\nmode = "shadow"', text, count=1)
        if not found:
            raise RuntimeError(f"{path}: no risk rule {rule} to put in shadow mode")
    text += MODEL_RISK_RULES
    # Webhooks: retried within seconds, not hours, so every delivery ends before the checks run; the
    # lease outlasts the time-out so a live worker's attempt is never taken over.
    text, found = re.subn(r"(?m)^\[webhooks\]$", "[webhooks]\n" + MODEL_WEBHOOKS, text, count=1)
    if not found:
        text += "\n[webhooks]\n" + MODEL_WEBHOOKS
    if "[connectors.iso8583_card]" not in text:
        text += f"\n[connectors.iso8583_card]\nread_timeout = {CARD_READ_TIMEOUT}\n"
    for service, port in (proxies or {}).items():
        connector, endpoint = PROXIED[service]
        text = _set_key(text, f"connectors.{connector}", "endpoint", f'"{endpoint.format(port=port)}"')
        text = _set_key(text, f"connectors.{connector}", "breaker_reset", str(BREAKER_RESET))
    path.write_text(text)
    return path


MODEL_WEBHOOKS = """interval = 0.1
timeout = 3.0
lease = 6.0
backoff_base = 0.2
backoff_cap = 1.0
"""
CHALLENGED = "cus_model_challenge"
REVIEWED = "cus_model_review"
PHONE = "+8613800138000"
MODEL_RISK_RULES = f"""
[[risk.tenants.acme.rules]]
id = "model_challenge"
when = "customer.id == '{CHALLENGED}'"
action = "challenge"
message = "The checker's step-up customer"

[[risk.tenants.acme.rules]]
id = "model_review"
when = "customer.id == '{REVIEWED}'"
action = "review"
message = "The checker's reviewed customer"
"""


def sandbox_ports(config: Path) -> dict[str, int]:
    section = config.read_text().partition("\n[sandbox]\n")[2].partition("\n[")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"(?m)^([a-z]+) = (\d+)", section)}


RETRY_LATER_503 = frozenset({"rates_stale", "database_unavailable"})


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Stack:
    """``payhub sandbox`` + ``payhub serve`` as child processes, logs under ``workdir``; the gateway
    reaches the ``PROXIED`` simulators through fault proxies (:meth:`link`)."""

    def __init__(self, home: Path, db_url: str, workdir: Path) -> None:
        self.home = home
        self.db_url = db_url
        self.workdir = workdir
        self.proxy_ports = {service: free_port() for service in PROXIED}
        self.config = prepare_config(workdir, self.proxy_ports)
        self.ports = sandbox_ports(self.config)
        self.proxies: ProxyThread | None = None
        self.links: dict[str, ThreadedProxy] = {}
        self.api_port = free_port()
        self.ops_port = free_port()
        self.sandbox: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.incarnation = 0  # how many gateway processes were started
        self.kills = 0
        self.unexpected_exits: list[str] = []

    def _env(self, **extra: str) -> dict[str, str]:
        return payhub_env(PAYHUB_CONFIG=str(self.config), PAYHUB_HOME=str(self.home), **extra)

    @property
    def gateway_log(self) -> Path:
        return self.workdir / f"gateway-{self.incarnation}.log"

    async def start(self) -> None:
        self.sandbox = start_payhub("sandbox", env=self._env(), stdout=self.workdir / "sandbox.log")
        await self._until(self._books_answer, self.sandbox, self.workdir / "sandbox.log", "payhub sandbox")
        self.proxies = ProxyThread()
        for service, port in self.proxy_ports.items():
            self.links[service] = self.proxies.add(self.ports[service], port=port)
        await self.start_gateway()

    def link(self, service: str) -> ThreadedProxy:
        """The fault proxy between the gateway and a simulator."""
        return self.links[service]

    async def start_gateway(self) -> None:
        self.incarnation += 1
        env = self._env(
            PAYHUB_DATABASE_URL=self.db_url,
            PAYHUB_LISTEN=f"127.0.0.1:{self.api_port}",
            PAYHUB_OPS_LISTEN=f"127.0.0.1:{self.ops_port}",
        )
        self.gateway = start_payhub("serve", env=env, stdout=self.gateway_log)
        await self._until(self._gateway_ready, self.gateway, self.gateway_log, "payhub serve")

    async def _until(self, probe: Any, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() - started < READY_DEADLINE:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{what} exited with {process.returncode} at start:\n{_tail(log.with_suffix('.err'))}"
                    )
                try:
                    if await probe(session):
                        return
                except (aiohttp.ClientError, TimeoutError, OSError):
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{what} not ready after {READY_DEADLINE} s:\n{_tail(log.with_suffix('.err'))}")

    async def _books_answer(self, session: aiohttp.ClientSession) -> bool:
        async with session.get(f"http://127.0.0.1:{self.ports['books']}/books") as resp:
            return resp.status == 200

    async def _gateway_ready(self, session: aiohttp.ClientSession) -> bool:
        async with session.get(f"http://127.0.0.1:{self.ops_port}/readyz") as resp:
            return resp.status == 200

    def gateway_alive(self) -> bool:
        return self.gateway is not None and self.gateway.poll() is None

    def kill_gateway(self) -> None:
        """kill -9: no shutdown handler runs, requests in flight are cut where they stand."""
        assert self.gateway is not None
        if self.gateway.poll() is None:
            os.kill(self.gateway.pid, signal.SIGKILL)
        self.gateway.wait(timeout=10)
        self.kills += 1

    async def recover(self) -> None:
        """The gateway exited without being killed by us: note it (a bug) and start it again."""
        assert self.gateway is not None
        self.unexpected_exits.append(
            f"gateway #{self.incarnation} exited with {self.gateway.returncode}; "
            f"stderr tail:\n{_tail(self.gateway_log.with_suffix('.err'))}"
        )
        await self.start_gateway()

    def stop(self) -> None:
        if self.proxies is not None:
            self.proxies.stop()
        for process in (self.gateway, self.sandbox):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (self.gateway, self.sandbox):
            if process is None:
                continue
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


# ---- the recorded client -----------------------------------------------------------------------


@dataclass
class Try:
    """One request on the wire and its answer (``status`` None: no answer, e.g. the gateway was down)."""

    status: int | None
    raw: bytes
    replayed: bool
    error: str | None
    at: float
    elapsed: float
    incarnation: int

    @property
    def body(self) -> Any:
        try:
            return orjson.loads(self.raw) if self.raw else None
        except orjson.JSONDecodeError:
            return None

    @property
    def retry_later(self) -> bool:
        """409 request_in_progress, 429, or a documented 503: not an answer to the request, ask again."""
        return self.in_progress or self.status == 429 or self.unavailable

    @property
    def unavailable(self) -> bool:
        """A documented 503 with Retry-After, not an error: ``rates_stale`` (a gateway just restarted
        has not read the FX feed yet) or ``database_unavailable`` (PostgreSQL is away)."""
        return self.status == 503 and self._code() in RETRY_LATER_503

    def _code(self) -> str | None:
        body = self.body
        if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
            return None
        code = body["error"].get("code")
        return code if isinstance(code, str) else None

    @property
    def in_progress(self) -> bool:
        body = self.body
        return (
            self.status == 409
            and isinstance(body, dict)
            and body.get("error", {}).get("code") == "request_in_progress"
        )


@dataclass
class Operation:
    """One logical request (same key, same body bytes) and all its tries."""

    number: int
    label: str
    method: str
    path: str
    body: Any
    key: str | None
    payload: bytes
    tries: list[Try] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def answer(self) -> Try | None:
        """The definite answer: the last try answered other than 409 request_in_progress or 429."""
        for attempt in reversed(self.tries):
            if attempt.status is not None and not attempt.retry_later:
                return attempt
        return None

    @property
    def status(self) -> int | None:
        answer = self.answer
        return answer.status if answer else None

    @property
    def json(self) -> Any:
        answer = self.answer
        return answer.body if answer else None

    def field(self, name: str) -> Any:
        body = self.json
        return body.get(name) if isinstance(body, dict) else None

    def mentions(self, object_id: str) -> bool:
        if object_id in self.path or object_id.encode() in self.payload:
            return True
        return any(object_id.encode() in attempt.raw for attempt in self.tries)

    def summary(self) -> str:
        """One line: number, label, request, tries, final answer."""
        what = f"#{self.number} {self.label}: {self.method} {self.path}"
        if self.payload:
            what += f" {_brief(self.body)}"
        if self.key:
            what += f" [key {self.key}]"
        answer = self.answer
        tries = f" ({len(self.tries)} tries)" if len(self.tries) > 1 else ""
        if answer is None:
            return f"{what}{tries} -> no answer"
        return f"{what}{tries} -> {answer.status} {_brief_answer(answer.body)}"

    def record(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "label": self.label,
            "method": self.method,
            "path": self.path,
            "key": self.key,
            "body": self.body,
            "notes": self.notes,
            "tries": [
                {
                    "status": t.status,
                    "replayed": t.replayed,
                    "error": t.error,
                    "at": round(t.at, 3),
                    "elapsed": round(t.elapsed, 3),
                    "gateway": t.incarnation,
                    "answer": t.raw.decode(errors="replace"),
                }
                for t in self.tries
            ],
        }


def _brief(body: Any) -> str:
    if not isinstance(body, dict):
        return json.dumps(body)
    parts = []
    method = body.get("payment_method")
    if isinstance(method, dict):
        kind = method.get("type")
        block = method.get(kind) if isinstance(kind, str) else None
        detail = ""
        if isinstance(block, dict):
            detail = str(
                block.get("number")
                or block.get("account_number")
                or block.get("provider")
                or block.get("code")
                or block.get("account")
                or ""
            )
        parts.append(f"{kind}:{detail}" if detail else str(kind))
    for name in ("amount", "currency", "capture_method", "payment", "amount_to_capture"):
        if name in body:
            parts.append(f"{name}={body[name]}")
    bill = body.get("bill")
    if isinstance(bill, dict):
        parts.append(
            f"bill={bill.get('biller')}:{','.join(map(str, bill.get('customer_params', {}).values()))}"
        )
    if "biller" in body and "customer_params" in body:
        parts.append(f"{body['biller']}:{','.join(map(str, body['customer_params'].values()))}")
    return "{" + " ".join(parts) + "}" if parts else json.dumps(body)[:120]


def _brief_answer(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    if "error" in body:
        error = body["error"]
        return f"{error.get('type')}/{error.get('code')}"
    parts = [str(body.get(k)) for k in ("id", "status") if body.get(k)]
    failure = body.get("failure")
    if isinstance(failure, dict):
        parts.append(str(failure.get("code")))
    posting = body.get("bill_posting")
    if isinstance(posting, dict):
        parts.append(f"posting={posting.get('status')}")
    if body.get("object") == "payment" or str(body.get("id", "")).startswith(("pay_", "re_")):
        parts.append(f"captured={body.get('amount_captured')} refunded={body.get('amount_refunded')}")
    return " ".join(p for p in parts if p and p != "None")


class History:
    """Every operation, in the order they were started."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def new(self, label: str, method: str, path: str, body: Any, key: str | None) -> Operation:
        payload = orjson.dumps(body) if body is not None else b""
        op = Operation(len(self.operations) + 1, label, method, path, body, key, payload)
        self.operations.append(op)
        return op

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.operations)

    def about(self, object_id: str, limit: int = 12) -> list[Operation]:
        """The operations whose request or answers name ``object_id`` (a reproduction, in order);
        ``#n`` is operation n itself."""
        if object_id.startswith("#") and object_id[1:].isdigit():
            return self.operations[int(object_id[1:]) - 1 : int(object_id[1:])]
        return [op for op in self.operations if op.mentions(object_id)][:limit]

    def dump(self, path: Path) -> None:
        with path.open("wb") as out:
            for op in self.operations:
                out.write(orjson.dumps(op.record()) + b"\n")


def new_key() -> str:
    return "model-" + secrets.token_hex(10)


class Client:
    """The acme client app (or the ops operator console). ``send`` is one try; ``call``/``settle``
    retry until a definite answer."""

    def __init__(self, stack: Stack, pki: PkiPaths, history: History, tenant: str = "acme") -> None:
        self.stack = stack
        self.history = history
        self._ssl = client_context(pki, tenant)
        self._session: aiohttp.ClientSession | None = None
        self._base = f"https://localhost:{stack.api_port}"

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=50)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
            )
        return self._session

    async def reset(self) -> None:
        """Drop pooled connections (after a gateway restart they all point at a dead process)."""
        if self._session is not None:
            await self._session.close()
        self._session = None

    async def close(self) -> None:
        await self.reset()

    def operation(
        self, label: str, method: str, path: str, body: Any = None, *, keyed: bool = True
    ) -> Operation:
        key = new_key() if keyed and method == "POST" else None
        return self.history.new(label, method, path, body, key)

    async def send(self, op: Operation) -> Try:
        headers = {"Content-Type": "application/json"} if op.payload else {}
        if op.key is not None:
            headers["Idempotency-Key"] = op.key
        started = time.monotonic()
        incarnation = self.stack.incarnation
        try:
            async with self._open().request(
                op.method, self._base + op.path, data=op.payload or None, headers=headers
            ) as resp:
                raw = await resp.read()
                attempt = Try(
                    resp.status,
                    raw,
                    resp.headers.get("Idempotent-Replayed") == "true",
                    None,
                    time.time(),
                    time.monotonic() - started,
                    incarnation,
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            attempt = Try(None, b"", False, repr(exc), time.time(), time.monotonic() - started, incarnation)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this request itself was cancelled
            # The session was closed under the request (``reset`` after a kill): aiohttp cancels its
            # pending host resolutions. No answer, like a cut connection: the request is retried.
            attempt = Try(None, b"", False, repr(exc), time.time(), time.monotonic() - started, incarnation)
        op.tries.append(attempt)
        return attempt

    async def settle(self, op: Operation, deadline: float = RETRY_DEADLINE) -> Operation:
        """Retry (same key, same bytes) until an answer other than 409 request_in_progress or 429."""
        started = time.monotonic()
        while op.answer is None:
            if op.tries and time.monotonic() - started > deadline:
                op.notes.append(f"no answer after {deadline} s of retries")
                break
            if op.tries and not self.stack.gateway_alive():
                await self.stack.recover()
                await self.reset()
            last = op.tries[-1] if op.tries else None
            if last is not None:
                later = last.status == 429 or last.unavailable
                await asyncio.sleep(1.0 if later else 0.5 if last.in_progress else 0.2)
            await self.send(op)
        return op

    async def call(
        self, label: str, method: str, path: str, body: Any = None, *, keyed: bool = True
    ) -> Operation:
        return await self.settle(self.operation(label, method, path, body, keyed=keyed))


# ---- the simulators ----------------------------------------------------------------------------


class Sandbox:
    """The sandbox's own HTTP surfaces: the books, and the wallet's payer."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self._session

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.stack.ports[service]}{path}"

    async def books(self) -> dict[str, Any]:
        async with self._open().get(self.url("books", "/books")) as resp:
            resp.raise_for_status()
            books: dict[str, Any] = await resp.json()
            return books

    async def wallet_never_pays_by_itself(self) -> None:
        """Wallet orders stay unpaid until the model pays them (or leaves them unpaid)."""
        async with self._open().post(
            self.url("ewallet", "/simulate/config"), json={"pay_after": None}
        ) as resp:
            resp.raise_for_status()

    async def set_latency(self, seconds: float) -> None:
        """Slow every HTTP simulator's answers (their ``POST /faults`` knob); 0 turns it off."""
        for service in ("bank", "ewallet", "utility", "telecom"):
            async with self._open().post(self.url(service, "/faults"), json={"latency": seconds}) as resp:
                resp.raise_for_status()

    async def messages_to(self, to: str) -> list[dict[str, Any]]:
        async with self._open().get(self.url("messages", "/messages"), params={"to": to}) as resp:
            resp.raise_for_status()
            messages: list[dict[str, Any]] = await resp.json()
            return messages

    async def pay_wallet(self, order: str) -> int:
        async with self._open().post(self.url("ewallet", f"/simulate/pay/{order}")) as resp:
            return resp.status

    async def restart(self, service: str, down_for: float, *, forget: bool) -> tuple[int, str]:
        """``POST /restart`` on the books service: 202 once ``service`` is down; it listens again after
        ``down_for`` s, with its books emptied if ``forget``."""
        body = {"service": service, "down_for": down_for, "forget": forget}
        async with self._open().post(self.url("books", "/restart"), json=body) as resp:
            return resp.status, await resp.text()

    async def is_up(self, service: str) -> bool:
        async with self._open().get(self.url("books", f"/restart/{service}")) as resp:
            resp.raise_for_status()
            return bool((await resp.json())["up"])

    async def notify(self, service: str, reference: str, body: dict[str, Any] | None) -> tuple[int, str]:
        """A bank or e-wallet simulator sends its signed callback for ``reference`` (again) now."""
        async with self._open().post(self.url(service, f"/simulate/notify/{reference}"), json=body) as resp:
            return resp.status, await resp.text()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
