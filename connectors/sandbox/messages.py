"""Message sink (DESIGN §3 port 9707, §12): where SMS, e-mail and push messages "go" in the sandbox.

API (JSON over HTTP; fault knobs at ``POST /faults``)::

    POST /messages      {to, channel: sms|email|push, body} → 201 {id, to, channel, body, sent}
    GET  /messages?to=  → 200 [{"to", "channel", "body", "sent"}, …] for that recipient, newest last
    GET  /messages      → 200 the last 100 messages to anyone, newest last

In memory and bounded: the oldest messages are forgotten beyond ``capacity`` (10 000).
``sent`` is RFC 3339 UTC with milliseconds.
"""

from __future__ import annotations

import secrets
from collections import deque
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import msgspec
from aiohttp import web

from config.settings import Settings
from connectors.sandbox.common import AppSimulator, decode_body

CAPACITY: Final = 10_000
UNFILTERED_LIMIT: Final = 100


class MessageIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    to: Annotated[str, msgspec.Meta(min_length=1, max_length=320)]
    channel: Literal["sms", "email", "push"]
    body: Annotated[str, msgspec.Meta(max_length=4096)]


class Message(msgspec.Struct, frozen=True):
    id: str
    to: str
    channel: str
    body: str
    sent: str

    def public(self) -> dict[str, Any]:
        return {"to": self.to, "channel": self.channel, "body": self.body, "sent": self.sent}


class MessageSink(AppSimulator):
    def __init__(
        self,
        settings: Settings,
        *,
        capacity: int = CAPACITY,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(settings, service="messages", host=host, port=port)
        self.messages: deque[Message] = deque(maxlen=capacity)
        self.app.router.add_post("/messages", self._post)
        self.app.router.add_get("/messages", self._list)

    def forget(self) -> None:
        self.messages.clear()

    def sent_to(self, to: str) -> list[Message]:
        return [m for m in self.messages if m.to == to]

    async def _post(self, request: web.Request) -> web.Response:
        params: MessageIn = await decode_body(request, MessageIn)
        sent = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        message = Message("msg_" + secrets.token_hex(8), params.to, params.channel, params.body, sent)
        self.messages.append(message)
        return web.json_response(
            {"id": message.id, **message.public()},
            status=201,
        )

    async def _list(self, request: web.Request) -> web.Response:
        to = request.query.get("to")
        listed = list(self.messages)[-UNFILTERED_LIMIT:] if to is None else self.sent_to(to)
        return web.json_response([m.public() for m in listed])


async def start(settings: Settings) -> MessageSink:
    return await MessageSink(settings).start()
