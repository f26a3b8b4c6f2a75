"""The one input layer in front of every handler (DESIGN §6): bad input of any shape is a 400
naming the ``param``, before it can reach PostgreSQL (which refuses NUL in text and jsonb and
would turn it into a 500) or a log line.

* Path parameters and list cursors are ids: printable ASCII only, so "pay_%00", "le_²" or "①"
  are refused here and a well-formed id that matches nothing stays a 404.
* Every other query value and every string in a JSON body is free of C0 control characters.
* Amounts are whole numbers in a JSON number of any spelling: ``100``, ``100.0`` and ``1e2`` are the
  same integer, as JSON Schema counts them.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import errors
from gateway.views.schemas import CONTROL_CHARS, MinorUnits

_CONTROL = re.compile(f"[{CONTROL_CHARS}]")
_ID = re.compile(r"[\x21-\x7e]+")
CURSOR_PARAMS = frozenset({"starting_after", "ending_before"})


def _refuse(param: str, what: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{param} must not contain {what}.", param=param)


def screen_body(value: Any, path: str = "") -> Any:
    """Walk a decoded body: refuse control characters in any string, unwrap ``MinorUnits``."""
    if isinstance(value, str):
        if _CONTROL.search(value):
            raise _refuse(path or "body", "control characters")
        return value
    if isinstance(value, MinorUnits):
        return int(value)
    if isinstance(value, msgspec.Struct):
        for field in value.__struct_fields__:
            inner = getattr(value, field)
            screened = screen_body(inner, f"{path}.{field}" if path else field)
            if screened is not inner:
                setattr(value, field, screened)
        return value
    if isinstance(value, dict):
        for key, inner in value.items():
            screen_body(key, path)
            screen_body(inner, f"{path}.{key}" if path else key)
        return value
    if isinstance(value, list):
        for index, inner in enumerate(value):
            screen_body(inner, f"{path}.{index}")
    return value


def screen_query_and_path(request: web.Request) -> None:
    for name, value in request.match_info.items():
        if not _ID.fullmatch(value):
            raise _refuse(name, "characters other than printable ASCII")
    for name, value in request.query.items():
        if _CONTROL.search(name):
            raise _refuse("query", "control characters")
        if name in CURSOR_PARAMS:
            if value and not _ID.fullmatch(value):
                raise _refuse(name, "characters other than printable ASCII")
        elif _CONTROL.search(value):
            raise _refuse(name, "control characters")


@web.middleware
async def screen_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.http_exception is None:
        screen_query_and_path(request)
    return await handler(request)
