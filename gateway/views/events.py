"""Events as the API shows them (``GET /v1/events/{id}``) and as webhooks carry them, byte for byte."""

from __future__ import annotations

import datetime as dt

import msgspec
import orjson

from gateway.views import schemas
from gateway.views.render import timestamp

_ENCODER = msgspec.json.Encoder()


def event(*, event_id: str, event_type: str, data: str, created: dt.datetime) -> schemas.Event:
    """``data.object`` is the object as it was when the event happened (Stripe's shape)."""
    return schemas.Event(
        id=event_id,
        type=event_type,
        data={"object": orjson.loads(data)},
        created=timestamp(created),
    )


def encode(value: schemas.Event) -> bytes:
    """The JSON the API answers with (gateway.api.common.json_response encodes the same way)."""
    return _ENCODER.encode(value)
