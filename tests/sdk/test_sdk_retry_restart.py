"""The SDK's idempotent retry across a gateway crash: the first try is cut by kill -9 while the slow
sandbox card (3 s at the acquirer) is being authorized, the gateway starts again, and the SDK's
retries with the same Idempotency-Key and body end in one payment charged once at the acquirer."""

from __future__ import annotations

import asyncio

from payhub_client import AsyncPayhub

from tests.sdk.sdk_stack import HubStack

SLOW_CARD = "4000000000000259"


async def test_a_retry_across_a_gateway_restart_charges_once(hub_stack: HubStack, unique: str) -> None:
    customer = f"cus_sdk_restart_{unique}"
    amount = 30_000 + int(unique[-4:])  # an amount no other test pays, to find it in the acquirer's book
    retries: list[str] = []
    async with AsyncPayhub(
        url=hub_stack.url,
        max_retries=60,  # the cut try's key stays locked for 20 s: 409 request_in_progress meanwhile
        backoff_cap=2.0,
        on_retry=lambda attempt, delay, reason: retries.append(reason),
        **hub_stack.tls(),
    ) as hub:
        create = asyncio.create_task(
            hub.payments.create(
                amount=amount,
                currency="CNY",
                payment_method={
                    "type": "card",
                    "card": {"number": SLOW_CARD, "exp_month": 12, "exp_year": 2031, "cvc": "123"},
                },
                customer={"id": customer},
            )
        )
        await asyncio.sleep(1.2)  # the request is at the acquirer, which answers after 3 s
        assert not create.done()
        await asyncio.to_thread(hub_stack.kill_gateway)
        await asyncio.to_thread(hub_stack.start_gateway)
        payment = await asyncio.wait_for(create, 90)

        assert payment.status == "succeeded", payment
        assert payment.amount_captured == amount
        # Cut mid-request, refused while the gateway was down, then 409 request_in_progress (Retry-After)
        # until the cut try's lock expired; the retry then resumed the recorded attempt.
        assert retries and retries[0] != "request_in_progress", retries
        assert "request_in_progress" in retries, retries
        assert [p.id async for p in hub.payments.list(customer=customer)] == [payment.id]

    charges = [c for c in hub_stack.books()["acquirer"]["charges"] if c["amount"] == amount]
    charged = [c for c in charges if c["charged"]]
    assert len(charged) == 1, charges
    assert charged[0]["charged"] == amount
    assert sum(c["charged"] for c in charges) == amount
