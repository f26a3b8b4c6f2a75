"""Type aliases shared by the store modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A plain connection or one borrowed from the pool: queries accept either.
Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


@dataclass(frozen=True, slots=True)
class Rider:
    """A one-row read that rides in another statement's round trip (gateway/store/vault.py): its
    SELECT with its parameters numbered from the given one, and its arguments."""

    select: Callable[[int], str]
    args: tuple[object, ...]
