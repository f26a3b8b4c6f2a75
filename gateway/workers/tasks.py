"""Helpers to run background loops tied to an application's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from gateway.logs import get_logger

log = get_logger("gateway.workers")


async def _guarded(coro: Coroutine[Any, Any, None], name: str) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        # A crashed loop must be loud; the process keeps serving and /readyz reports the state.
        log.exception("worker.crashed", worker=name)
        raise


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, None], *, name: str) -> AsyncIterator[asyncio.Task[None]]:
    """Start ``coro`` as a task for the duration of the block; cancel and await it on exit."""
    task = asyncio.create_task(_guarded(coro, name), name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
