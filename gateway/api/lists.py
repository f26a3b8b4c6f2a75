"""List conventions (Stripe's): ``limit`` 1 to 100 (default 10), ``starting_after`` / ``ending_before``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway import errors
from gateway.api.common import json_response
from gateway.store import pages
from gateway.store.types import Connection
from gateway.views import schemas

DEFAULT_LIMIT = 10
MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    starting_after: str | None
    ending_before: str | None

    @property
    def cursor(self) -> tuple[str, str] | None:
        """(param, id) of the cursor given, if any; every list answers 404 when it is unknown."""
        if self.starting_after:
            return "starting_after", self.starting_after
        if self.ending_before:
            return "ending_before", self.ending_before
        return None


def page_params(request: web.Request) -> Page:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    # fullmatch on ASCII digits: str.isdigit() also accepts "²", which int() then refuses.
    if not re.fullmatch(r"[0-9]{1,3}", raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise errors.InvalidRequest(f"limit must be an integer between 1 and {MAX_LIMIT}.", param="limit")
    starting_after = request.query.get("starting_after") or None
    ending_before = request.query.get("ending_before") or None
    if starting_after and ending_before:
        raise errors.InvalidRequest("Use starting_after or ending_before, not both.", param="ending_before")
    return Page(int(raw), starting_after, ending_before)


def unknown_cursor(what: str, cursor: tuple[str, str]) -> errors.NotFound:
    param, value = cursor
    return errors.NotFound(f"No such {what}: '{value}'.", param=param)


async def refuse_unknown_cursor(
    conn: Connection, page: Page, rows: Sequence[Any], *, table: str, tenant: str, what: str
) -> None:
    """An empty page is either the end of the list or a cursor that is not the caller's (404 naming
    it); asked only for an empty page, so a page with rows costs no extra round trip."""
    if (
        page.cursor is not None
        and not rows
        and not await pages.tenant_has(conn, table=table, tenant=tenant, object_id=page.cursor[1])
    ):
        raise unknown_cursor(what, page.cursor)


# Ledger entry ids are bigints shown as "le_<n>". ASCII digits only (the screen already refused
# "le_²"); a number past PostgreSQL's bigint is out of range rather than unknown.
_ENTRY_ID = re.compile(r"le_([0-9]+)")
MAX_BIGINT = 2**63 - 1


def entry_number(cursor: tuple[str, str]) -> int:
    """The number in an entries cursor; 400 when out of range, 404 when it is no entry id at all."""
    param, value = cursor
    match = _ENTRY_ID.fullmatch(value)
    if match is None:
        raise unknown_cursor("ledger entry", cursor)
    number = match[1]
    if len(number) > len(str(MAX_BIGINT)) or int(number) > MAX_BIGINT:
        raise errors.InvalidRequest(f"{param} is out of range.", param=param)
    return int(number)


def render_list(data: Sequence[Any], has_more: bool, url: str) -> web.Response:
    return json_response(schemas.ListResponse(data=list(data), has_more=has_more, url=url))
