"""One log line per request, the buffered sink and the SAFE_KEYS allowlist (gateway.logs)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import logs
from gateway.keys import METRICS
from gateway.logs import (
    SAFE_KEYS,
    audit,
    bind_tenant,
    close_request,
    configure_logging,
    flush_logs,
    get_logger,
    is_sensitive_key,
    open_request,
)
from gateway.metrics import Metrics
from gateway.middlewares import context_middleware

VISA = "4111111111111111"
VISA_MASKED = "411111******1111"
ACTOR = "spiffe://payhub.local/tenant/acme/role/client"


@pytest.fixture(autouse=True, scope="module")
def _restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    root = logging.getLogger()
    level = root.level
    stream = logs._SINK.stream
    yield
    logs._SINK.set_stream(stream)
    structlog.configure(**saved)
    root.setLevel(level)


class Recorder(io.RawIOBase):
    """A binary stream that keeps each write() apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def lines(self) -> list[dict[str, Any]]:
        data = b"".join(self.writes)
        assert data.endswith(b"\n") or not data
        return [orjson.loads(line) for line in data.splitlines()]


@pytest.fixture
def out() -> Recorder:
    recorder = Recorder()
    configure_logging("info", stream=recorder)
    return recorder


def close(scope: logs.RequestScope, *, status: int = 200, path: str = "/v1/payments") -> None:
    close_request(
        scope,
        method="POST",
        path=path,
        route="/v1/payments",
        status=status,
        duration_ms=12.5,
        tenant="acme",
        peer="127.0.0.1",
    )


def pay_audit(**fields: Any) -> None:
    audit(
        "payment.create",
        actor=ACTOR,
        outcome="succeeded",
        source="127.0.0.1",
        object_id="pay_1",
        tenant="acme",
        **fields,
    )


async def turn() -> None:
    """Let the current event-loop turn end (the sink writes its batch then)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


# ---- one line per request ------------------------------------------------------------------------------


async def test_a_request_that_audits_writes_its_audit_line_with_the_access_fields(out: Recorder) -> None:
    scope = open_request("req_1")
    bind_tenant("acme")
    get_logger("payments").info("payment.step")
    pay_audit(amount=12850, method="card", audit_seq=7)
    close(scope, path=f"/v1/payments?card={VISA}")
    await turn()
    step, line = out.lines()
    assert (step["event"], step["request_id"], step["tenant"]) == ("payment.step", "req_1", "acme")
    line.pop("ts")
    assert line == {
        "audit": True,
        "action": "payment.create",
        "actor": ACTOR,
        "tenant": "acme",
        "outcome": "succeeded",
        "source": "127.0.0.1",
        "object": "pay_1",
        "amount": 12850,
        "method": "card",  # the payment's method; the HTTP one is in "http"
        "audit_seq": 7,
        "event": "audit",
        "request_id": "req_1",
        "level": "info",
        "logger": "audit",
        "http": {
            "method": "POST",
            "path": f"/v1/payments?card={VISA_MASKED}",
            "route": "/v1/payments",
            "status": 200,
            "duration_ms": 12.5,
            "peer": "127.0.0.1",
        },
    }


async def test_a_request_without_audit_writes_the_access_line(out: Recorder) -> None:
    scope = open_request("req_2")
    close(scope, status=404, path=f"/v1/nowhere/{VISA}")
    await turn()
    [line] = out.lines()
    line.pop("ts")
    assert line == {
        "method": "POST",
        "path": f"/v1/nowhere/{VISA_MASKED}",
        "route": "/v1/payments",
        "status": 404,
        "duration_ms": 12.5,
        "tenant": "acme",
        "peer": "127.0.0.1",
        "event": "http.request",
        "request_id": "req_2",
        "level": "info",
        "logger": "gateway.access",
    }


async def test_several_audit_lines_keep_their_order_and_the_first_carries_the_request(out: Recorder) -> None:
    scope = open_request("req_3")
    pay_audit(step=1)
    pay_audit(step=2)
    close(scope)
    await turn()
    first, second = out.lines()
    assert (first["step"], second["step"]) == (1, 2)
    assert first["http"]["status"] == 200
    assert "http" not in second
    assert first["request_id"] == second["request_id"] == "req_3"


async def test_audit_lines_wait_for_the_end_of_the_request_and_are_never_level_filtered() -> None:
    recorder = Recorder()
    configure_logging("warning", stream=recorder)
    scope = open_request("req_4")
    pay_audit()
    await turn()
    assert recorder.writes == []  # rendered, not written: the request has not ended
    close(scope)
    await turn()
    [line] = recorder.lines()
    assert (line["event"], line["http"]["route"]) == ("audit", "/v1/payments")
    scope = open_request("req_5")
    close(scope)  # the info-level access line is filtered out at "warning"
    await turn()
    assert len(recorder.lines()) == 1


def test_audit_fields_may_not_take_the_requests_key() -> None:
    with pytest.raises(TypeError, match="http"):
        pay_audit(http={"status": 200})


def test_audit_outside_a_request_is_written_at_once(out: Recorder) -> None:
    pay_audit()
    [line] = out.lines()
    assert "http" not in line
    assert "request_id" not in line


async def test_audit_from_a_task_that_outlives_its_request_is_written_at_once(out: Recorder) -> None:
    scope = open_request("req_6")
    done = asyncio.Event()
    release = asyncio.Event()

    async def background() -> None:
        await release.wait()
        pay_audit(late=True)
        done.set()

    task = asyncio.create_task(background())  # copies the request's context
    close(scope)
    release.set()
    await done.wait()
    await task
    await turn()
    access, late = out.lines()
    assert access["event"] == "http.request"
    assert (late["event"], late["request_id"], late["late"]) == ("audit", "req_6", True)
    assert "http" not in late


def test_request_ids_from_the_context_are_kept_as_made(out: Recorder) -> None:
    """A random hex request id sometimes holds a Luhn-valid digit run; it is ours, never masked."""
    scope = open_request(f"req_{VISA}")
    get_logger("t").warning("x", note=VISA)
    [line] = out.lines()  # no loop: written at once
    assert line["request_id"] == f"req_{VISA}"
    assert line["note"] == VISA_MASKED
    close(scope)


# ---- the middleware ---------------------------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async def pay(request: web.Request) -> web.Response:
        pay_audit(amount=100)
        return web.json_response({"ok": True})

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[context_middleware])
    app[METRICS] = Metrics()
    app.router.add_post("/v1/payments", pay)
    app.router.add_get("/v1/ping", ping)
    server = TestServer(app)
    await server.start_server(access_log=None)  # as gateway.server: the middleware logs instead
    async with TestClient(server) as test_client:
        yield test_client


async def test_the_middleware_writes_one_line_per_request(
    out: Recorder, client: TestClient[web.Request, web.Application]
) -> None:
    paid = await client.post("/v1/payments", json={})
    pinged = await client.get(f"/v1/ping?card={VISA}")
    await turn()
    pay_line, ping_line = out.lines()
    assert pay_line["event"] == "audit"
    assert pay_line["request_id"] == paid.headers["Request-Id"]
    assert pay_line["http"]["method"] == "POST"
    assert pay_line["http"]["status"] == 200
    assert ping_line["event"] == "http.request"
    assert ping_line["request_id"] == pinged.headers["Request-Id"]
    assert ping_line["path"] == f"/v1/ping?card={VISA_MASKED}"
    text = client.app[METRICS].render().decode()
    assert 'payhub_http_requests_total{method="POST",route="/v1/payments",status="200"} 1.0' in text
    assert 'payhub_http_request_duration_seconds_count{method="GET",route="/v1/ping"} 1.0' in text


# ---- the buffered sink ------------------------------------------------------------------------------------


async def test_lines_of_one_loop_turn_are_written_together(out: Recorder) -> None:
    log = get_logger("t")
    for n in range(5):
        log.info("line", n=n)
    assert out.writes == []
    await turn()
    assert len(out.writes) == 1
    assert [line["n"] for line in out.lines()] == [0, 1, 2, 3, 4]


async def test_an_error_line_is_written_at_once_after_what_came_before(out: Recorder) -> None:
    log = get_logger("t")
    log.info("before")
    log.error("failed")
    assert [line["event"] for line in out.lines()] == ["before", "failed"]
    logging.getLogger("asyncio").info("stdlib, later")
    logging.getLogger("asyncio").error("stdlib error")
    assert [line["event"] for line in out.lines()][2:] == ["stdlib, later", "stdlib error"]


async def test_a_batch_is_written_in_pipe_atomic_chunks_of_whole_lines(out: Recorder) -> None:
    """Workers may share a pipe: no write() above PIPE_BUF (4096) unless a single line is longer."""
    log = get_logger("t")
    for n in range(40):
        log.info("line", n=n, pad="x" * 300)
    log.info("long", pad="y" * 5000)
    await turn()
    assert len(out.writes) > 1
    for data in out.writes:
        assert data.endswith(b"\n")
        assert len(data) <= 4096 or data.count(b"\n") == 1
    assert [line.get("n") for line in out.lines()] == [*range(40), None]


async def test_a_full_batch_is_written_at_once(out: Recorder) -> None:
    log = get_logger("t")
    for n in range(logs._Sink.MAX_LINES):
        log.info("line", n=n)
    assert len(out.lines()) == logs._Sink.MAX_LINES


async def test_flush_and_a_new_stream_write_what_is_pending(out: Recorder) -> None:
    get_logger("t").info("one")
    flush_logs()
    assert [line["event"] for line in out.lines()] == ["one"]
    get_logger("t").info("two")
    other = Recorder()
    configure_logging("info", stream=other)  # "two" was meant for the first stream
    assert [line["event"] for line in out.lines()] == ["one", "two"]
    assert other.writes == []


async def test_lines_from_a_thread_without_a_loop_are_written_through(out: Recorder) -> None:
    get_logger("t").info("on the loop")
    thread = threading.Thread(target=lambda: get_logger("t").info("from a thread"))
    thread.start()
    thread.join()
    assert [line["event"] for line in out.lines()] == ["from a thread"]
    await turn()
    assert [line["event"] for line in out.lines()] == ["from a thread", "on the loop"]


def test_a_batch_left_by_a_stopped_loop_is_written_before_the_next_line(out: Recorder) -> None:
    async def log_and_stop() -> None:
        get_logger("t").info("last words")
        asyncio.get_running_loop().stop()

    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(log_and_stop())
        loop.run_forever()  # stops before the flush it scheduled runs
    finally:
        loop.close()
    assert task.done()
    get_logger("t").info("afterwards")
    assert [line["event"] for line in out.lines()] == ["last words", "afterwards"]


# ---- SAFE_KEYS, timestamps --------------------------------------------------------------------------------


def test_safe_keys_are_deliberate_and_never_sensitive() -> None:
    assert (
        frozenset(
            {
                "level",
                "ts",
                "logger",
                "request_id",
                "audit",
                "audit_seq",
                "action",
                "actor",
                "outcome",
                "route",
                "status",
                "duration_ms",
            }
        )
        == SAFE_KEYS
    )
    assert not any(is_sensitive_key(key) for key in SAFE_KEYS)


def test_safe_keys_skip_the_scan_only_for_top_level_scalars(out: Recorder) -> None:
    get_logger("t").warning(
        "x",
        status=f"as given {VISA}",  # a top-level scalar under a safe key: passed as is
        route={"note": VISA},  # a container under a safe key: scrubbed
        nested={"status": VISA, "request_id": VISA},  # safe names below the top level: scrubbed
        other=VISA,
    )
    [line] = out.lines()
    assert line["status"] == f"as given {VISA}"
    assert line["route"] == {"note": VISA_MASKED}
    assert line["nested"] == {"status": VISA_MASKED, "request_id": VISA_MASKED}
    assert line["other"] == VISA_MASKED


def test_timestamps_are_utc_to_the_microsecond(out: Recorder) -> None:
    for _ in range(3):
        get_logger("t").warning("x")
    for line in out.lines():
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["ts"])
