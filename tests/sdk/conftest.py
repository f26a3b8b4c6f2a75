"""Fixtures of the SDK and CLI tests: one real hub (tests/sdk/sdk_stack.py) for the package."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store.embedded import with_database
from tests.sdk.sdk_stack import HubStack
from tests.support import postgres


@pytest.fixture(scope="package")
def hub_stack(
    payhub_home: Path, pg_admin_url: str, pg_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubStack]:
    name = asyncio.run(postgres.clone_database(pg_admin_url, pg_template))
    stack = HubStack(payhub_home, with_database(pg_admin_url, name), tmp_path_factory.mktemp("sdk-hub"))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        postgres.drop_database(pg_admin_url, name)


@pytest.fixture
def unique() -> str:
    """A short suffix that keeps one test's customers apart from another's."""
    return f"{time.time_ns() % 10**12:012d}"
