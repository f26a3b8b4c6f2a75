"""Running a money-moving request under its Idempotency-Key (DESIGN §6).

The handler's work receives the claim (with its recovery point, for resuming after a crash) and
must store its response with ``idempotency.finish`` in the transaction that commits the outcome,
so the outcome and the replayable response can never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway import errors
from gateway.store import idempotency
from gateway.store.idempotency import Claimed, ClaimResult, InProgress, Mismatch, Replay

MAX_KEY_LENGTH = 255
RETRY_LET_GO = 0.5  # s between two tries to give a key up while the database is away


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    body: bytes
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class KeyedRequest:
    tenant: str
    key: str
    method: str
    path: str
    body: bytes

    @property
    def fingerprint(self) -> bytes:
        # The raw body, byte for byte: "the same request" means the same bytes were sent.
        return hashlib.sha256(b"\0".join((self.method.encode(), self.path.encode(), self.body))).digest()


def require_key(header: str | None) -> str:
    if header is None or not header.strip():
        raise errors.InvalidRequest(
            "This request moves money and needs an Idempotency-Key header.",
            code="idempotency_key_missing",
            param="Idempotency-Key",
        )
    if len(header) > MAX_KEY_LENGTH or not header.isprintable():
        raise errors.InvalidRequest(
            f"Idempotency-Key must be at most {MAX_KEY_LENGTH} printable characters.",
            code="parameter_invalid",
            param="Idempotency-Key",
        )
    return header


async def run_idempotent(
    pool: asyncpg.Pool,
    request: KeyedRequest,
    work: Callable[[Claimed], Awaitable[Outcome]],
    *,
    claim: Callable[[], Awaitable[ClaimResult | None]] | None = None,
) -> Outcome:
    """``claim``: a statement that claims the key along with the work's first writes (a create's
    intake); when it claims nothing (None), the key is claimed on its own."""
    claimed_at = time.monotonic()  # no later than the database's start of the claim's lock
    result = await claim() if claim is not None else None
    if result is None:
        async with pool.acquire() as conn:
            result = await idempotency.claim(
                conn,
                tenant=request.tenant,
                key=request.key,
                method=request.method,
                path=request.path,
                request_hash=request.fingerprint,
            )
    if isinstance(result, Replay):
        return Outcome(result.status, result.body, replayed=True)
    if isinstance(result, InProgress):
        raise errors.IdempotencyInProgress(
            "Another request with this Idempotency-Key is still being processed; retry later.",
            headers={"Retry-After": "1"},
        )
    if isinstance(result, Mismatch):
        raise errors.IdempotencyFailed(
            "This Idempotency-Key was already used with different request parameters.",
            code="idempotency_key_reused",
        )
    claimed = result
    try:
        return await work(claimed)
    except BaseException as exc:
        refused = isinstance(exc, errors.ApiError) and exc.status < 500
        try:
            await _let_go(pool, request, claimed, refused=refused)
        except Exception:
            # The database is away (most likely why the work failed too). Left alone, the key would
            # answer 409 request_in_progress until its lock runs out (LOCK_SECONDS) although the
            # database may be back in seconds: let go of it as soon as it is. The original error
            # goes on to the caller (a database outage is a 503).
            _in_background(_let_go_when_back(pool, request, claimed, refused=refused, claimed_at=claimed_at))
        raise


async def _let_go(pool: asyncpg.Pool, request: KeyedRequest, claim: Claimed, *, refused: bool) -> None:
    async with pool.acquire() as conn:
        if refused:
            # Refused before anything moved (validation, not found): not stored, a fixed retry passes.
            await idempotency.release(
                conn, tenant=request.tenant, key=request.key, owned_until=claim.locked_until
            )
        else:
            # The hub failed: no 5xx is stored as the key's answer. Before any recovery point the
            # key is released (a corrected body may use it); after one, a retry of the same request
            # resumes the same attempt ids.
            await idempotency.abandon(
                conn, tenant=request.tenant, key=request.key, owned_until=claim.locked_until
            )


async def _let_go_when_back(
    pool: asyncpg.Pool, request: KeyedRequest, claim: Claimed, *, refused: bool, claimed_at: float
) -> None:
    """Try again until it works or the lock has run out anyway (the claim's lock fences a late try)."""
    while (left := claimed_at + idempotency.LOCK_SECONDS - time.monotonic()) > 0:
        await asyncio.sleep(min(RETRY_LET_GO, left))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(left):
                await _let_go(pool, request, claim, refused=refused)
            return


_background: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones


def _in_background(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(coro, name="idempotency-let-go")
    _background.add(task)
    task.add_done_callback(_background.discard)
