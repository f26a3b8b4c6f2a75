"""Shared request parsing and response rendering for handlers."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from gateway import errors
from gateway.api.screen import screen_body
from gateway.views.schemas import NO_CONTROLS, decode_hook

T = TypeVar("T")

_ENCODER = msgspec.json.Encoder()
_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def _decoder(model: type[T]) -> msgspec.json.Decoder[T]:
    decoder = _DECODERS.get(model)
    if decoder is None:
        decoder = _DECODERS[model] = msgspec.json.Decoder(model, dec_hook=decode_hook)
    return decoder


async def read_json(request: web.Request, model: type[T]) -> T:
    """Decode and validate a JSON body into ``model``; every failure is a 4xx naming the field.
    An empty body is ``{}`` whatever its Content-Type (``/capture`` and ``/cancel`` need none)."""
    body = await request.read()  # already read, within its size cap and deadline, by the traffic middleware
    if body and request.content_type not in ("application/json", ""):
        raise errors.InvalidRequest("Content-Type must be application/json.", code="unsupported_content_type")
    try:
        return screen_body(_decoder(model).decode(body or b"{}"))  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        message, code, param = describe_validation_error(exc)
        raise errors.InvalidRequest(message, code=code, param=param) from exc
    except msgspec.DecodeError as exc:
        raise errors.InvalidRequest("Request body is not valid JSON.", code="invalid_json") from exc


_FIELD_IN_MESSAGE = re.compile(r"^Object (contains unknown|missing required) field `([^`]*)`$")


def describe_validation_error(exc: msgspec.ValidationError) -> tuple[str, str, str | None]:
    """msgspec's message → (message, code, param) with ``param`` as a dotted path ("payment_method.card")."""
    message, _, where = str(exc).partition(" - at `")
    where = where.removeprefix("key` in `")  # a bad dict key is reported at the dict ("metadata")
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    path = re.sub(r"\[(\d+)\]", r".\1", path)  # list indexes as path segments: metadata.items.0
    path = path.replace("[...]", "")  # a dict value: msgspec does not say which key, so the dict
    if repr(NO_CONTROLS) in message:  # msgspec quotes the pattern with repr()
        message = "Expected a string without control characters"
    match = _FIELD_IN_MESSAGE.match(message)
    if match is None:
        return message, "parameter_invalid", path or None
    field = ".".join(part for part in (path, match[2]) if part)
    if match[1] == "missing required":
        return f"Missing required parameter: {field}.", "parameter_missing", field
    return f"Received unknown parameter: {field}.", "parameter_unknown", field


def json_response(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=_ENCODER.encode(data), status=status, content_type="application/json")
