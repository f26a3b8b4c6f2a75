"""The message sender: ``POST /messages {to, channel, body}`` on the sink (DESIGN §3 port 9707).

In the sandbox the sink only records what was sent (``GET /messages?to=``); in production
``[connectors.messages] endpoint`` points at the SMS/e-mail provider's gateway speaking the same API.
Not a payment connector: it moves no money, so a failure is reported, never retried blindly.
"""

from __future__ import annotations

from typing import Literal

from config.settings import ConnectorSettings, Settings
from connectors.base import ConnectorUnavailable
from connectors.http import OutboundClient

NAME = "messages"
Channel = Literal["sms", "email", "push"]


class MessageSender:
    def __init__(self, settings: Settings, http: OutboundClient) -> None:
        self._config = settings.connectors.get(NAME, ConnectorSettings())
        self._endpoint = (self._config.endpoint or settings.sandbox.url("messages")).rstrip("/")
        self._http = http

    async def send(self, to: str, channel: Channel, body: str) -> None:
        reply = await self._http.request(
            NAME,
            self._config,
            "send",
            "POST",
            f"{self._endpoint}/messages",
            json={"to": to, "channel": channel, "body": body},
        )
        if reply.status not in (200, 201):
            raise ConnectorUnavailable(f"{NAME}: HTTP {reply.status} on send")
