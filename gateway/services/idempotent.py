"""Running a money-moving request under its Idempotency-Key (DESIGN §6).

The handler's work receives the claim (with its recovery point, for resuming after a crash) and
must store its response with ``idempotency.finish`` in the transaction that commits the outcome,
so the outcome and the replayable response can never disagree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from gateway import errors
from gateway.store import idempotency
from gateway.store.idempotency import Claimed, InProgress, Mismatch, Replay

MAX_KEY_LENGTH = 255


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
    pool: asyncpg.Pool, request: KeyedRequest, work: Callable[[Claimed], Awaitable[Outcome]]
) -> Outcome:
    async with pool.acquire() as conn:
        claim = await idempotency.claim(
            conn,
            tenant=request.tenant,
            key=request.key,
            method=request.method,
            path=request.path,
            request_hash=request.fingerprint,
        )
    if isinstance(claim, Replay):
        return Outcome(claim.status, claim.body, replayed=True)
    if isinstance(claim, InProgress):
        raise errors.IdempotencyInProgress(
            "Another request with this Idempotency-Key is still being processed; retry later.",
            headers={"Retry-After": "1"},
        )
    if isinstance(claim, Mismatch):
        raise errors.IdempotencyFailed(
            "This Idempotency-Key was already used with different request parameters.",
            code="idempotency_key_reused",
        )
    try:
        return await work(claim)
    except BaseException as exc:
        async with pool.acquire() as conn:
            if isinstance(exc, errors.ApiError) and exc.status < 500:
                # Refused before anything moved (validation, not found): not stored, a fixed retry passes.
                await idempotency.release(conn, tenant=request.tenant, key=request.key)
            else:
                # The hub failed: no 5xx is stored as the key's answer. Before any recovery point the
                # key is released (a corrected body may use it); after one, a retry of the same request
                # resumes the same attempt ids.
                await idempotency.abandon(conn, tenant=request.tenant, key=request.key)
        raise
