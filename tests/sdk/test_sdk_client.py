"""The Python SDK against a real hub (``payhub sandbox`` + ``payhub serve`` child processes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from payhub_client import AsyncPayhub, Payhub, errors, webhooks
from payhub_client.models import Payment

from tests.sdk.sdk_stack import HubStack

CARD = {"number": "4111111111111111", "exp_month": 12, "exp_year": 2031, "cvc": "123"}
CARD_METHOD = {"type": "card", "card": CARD}


@pytest.fixture
async def hub(hub_stack: HubStack) -> AsyncIterator[AsyncPayhub]:
    async with AsyncPayhub(url=hub_stack.url, **hub_stack.tls()) as client:
        yield client


async def settle(hub: AsyncPayhub, payment: Payment, deadline: float = 20.0) -> Payment:
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        posting = (payment.bill_posting or {}).get("status")
        if payment.status != "processing" and posting not in {"posting", "pending"}:
            return payment
        await asyncio.sleep(0.2)
        payment = await hub.payments.get(payment.id)
    raise AssertionError(f"{payment.id} still {payment.status} / {payment.bill_posting}")


async def test_ping_and_p12(hub_stack: HubStack) -> None:
    async with AsyncPayhub(url=hub_stack.url, **hub_stack.tls()) as hub:
        ping = await hub.ping()
    assert (ping.tenant, ping.role) == ("acme", "client")
    # A PKCS#12 bundle alone: the hub's dev bundles carry its CA, trusted when no cacert is given.
    async with AsyncPayhub(url=hub_stack.url, p12=hub_stack.pki.client_p12("globex")) as hub:
        assert (await hub.ping()).tenant == "globex"


async def test_card_payment_refund_and_token(hub: AsyncPayhub, unique: str) -> None:
    payment = await hub.payments.create(
        amount=12850,
        currency="CNY",
        payment_method=CARD_METHOD,
        customer={"id": f"cus_sdk_card_{unique}"},
        description="June electricity",
        metadata={"order": "A-17"},
    )
    assert payment.status == "succeeded", payment
    assert payment.amount_captured == 12850
    assert payment.payment_method["card"]["last4"] == "1111"
    assert payment.metadata == {"order": "A-17"}
    assert payment.risk is not None and payment.risk.decision == "allow"
    assert (await hub.payments.get(payment.id)).updated >= payment.created

    refund = await hub.refunds.create(payment=payment.id, amount=2850, reason="requested_by_customer")
    assert (refund.status, refund.amount, refund.payment) == ("succeeded", 2850, payment.id)
    assert (await hub.refunds.get(refund.id)).id == refund.id
    assert [r.id async for r in hub.refunds.list(payment=payment.id)] == [refund.id]
    assert (await hub.payments.get(payment.id)).amount_refunded == 2850

    token = await hub.tokens.create(card=CARD)
    assert token.id.startswith("tok_") and token.card.last4 == "1111"
    by_token = await hub.payments.create(
        amount=500, currency="CNY", payment_method={"type": "card", "card": {"token": token.id}}
    )
    assert by_token.status == "succeeded"

    declined = await hub.payments.create(
        amount=500,
        currency="CNY",
        payment_method={"type": "card", "card": {**CARD, "number": "4000000000000002"}},
    )
    assert declined.status == "failed"  # a decline is an answer, not an exception
    assert declined.failure is not None and declined.failure.code == "do_not_honor"


async def test_bill_fetch_and_pay(hub: AsyncPayhub, unique: str) -> None:
    billers = [b async for b in hub.billers.list(category="electricity")]
    assert {"bil_cn_power", "bil_us_power"} <= {b.id for b in billers}
    power = await hub.billers.get("bil_cn_power")
    assert power.customer_params[0].name == "account_number"

    params = {"account_number": f"31{unique[-8:]}"}
    bills = await hub.bills.fetch(power, params)
    assert len(bills) == 1
    bill = bills[0]
    assert bill.amount_due > 0 and bill.currency == "CNY" and bill.due_date.year >= 2025
    payment = await hub.payments.create(
        amount=bill.amount_due,
        currency=bill.currency,
        payment_method=CARD_METHOD,
        bill={"biller": power.id, "customer_params": params, "bill_ref": bill.bill_ref},
    )
    payment = await settle(hub, payment)
    assert payment.status == "succeeded", payment
    assert payment.bill_posting is not None and payment.bill_posting["status"] == "posted"

    with pytest.raises(errors.InvalidRequestError) as no_dues:
        await hub.bills.fetch("bil_cn_power", {"account_number": "0031230000"})
    assert no_dues.value.code == "bill_not_found"


async def test_otp_step_up(hub: AsyncPayhub, hub_stack: HubStack, unique: str) -> None:
    phone = f"+86139{unique[-8:]}"
    payment = await hub.payments.create(
        amount=250_000,  # 2,500 USD from a device never seen: the dev rules ask for an OTP
        currency="USD",
        payment_method=CARD_METHOD,
        customer={"id": f"cus_sdk_otp_{unique}", "phone": phone, "device_id": f"dev_{unique}"},
    )
    assert payment.status == "requires_action", payment
    assert payment.next_action is not None and payment.next_action["type"] == "otp"
    code = await hub_stack.otp_for(phone)
    wrong = "000000" if code != "000000" else "111111"
    with pytest.raises(errors.InvalidRequestError) as refused:
        await hub.payments.confirm(payment.id, otp=wrong)
    assert (refused.value.code, refused.value.param) == ("authentication_failed", "otp")
    confirmed = await hub.payments.confirm(payment.id, otp=code)
    assert confirmed.status == "succeeded", confirmed


async def test_lists_page_automatically(hub_stack: HubStack, hub: AsyncPayhub, unique: str) -> None:
    customer = f"cus_sdk_list_{unique}"
    created = [
        await hub.payments.create(
            amount=100 + i, currency="CNY", payment_method=CARD_METHOD, customer={"id": customer}
        )
        for i in range(5)
    ]
    pager = hub.payments.list(customer=customer, limit=2)
    first = await pager.first_page()
    assert len(first.data) == 2 and first.has_more
    listed = [p.id async for p in pager]  # three pages of 2, 2, 1
    assert listed == [p.id for p in reversed(created)]
    assert [p.id for p in await hub.payments.list(customer=customer, amount_gte=103, limit=1).collect()] == [
        created[4].id,
        created[3].id,
    ]
    # The blocking facade: the same resources, plain iterators.
    with Payhub(hub_stack.url, **hub_stack.tls()) as sync_hub:
        assert sync_hub.ping().tenant == "acme"
        assert [p.id for p in sync_hub.payments.list(customer=customer, limit=2)] == listed
        assert sync_hub.payments.get(created[0].id).amount == 100


async def test_typed_errors(hub_stack: HubStack, hub: AsyncPayhub) -> None:
    with pytest.raises(errors.InvalidRequestError) as bad:
        await hub.payments.create(amount=0, currency="CNY", payment_method=CARD_METHOD)
    assert (bad.value.status, bad.value.type, bad.value.code, bad.value.param) == (
        400,
        "invalid_request_error",
        "parameter_invalid",
        "amount",
    )
    assert bad.value.request_id is not None and bad.value.request_id.startswith("req_")
    assert bad.value.request_id in str(bad.value)

    with pytest.raises(errors.InvalidRequestError) as missing:
        await hub.payments.get("pay_doesnotexist")
    assert (missing.value.status, missing.value.code) == (404, "resource_missing")

    with pytest.raises(errors.PermissionDeniedError) as denied:
        await hub.reviews.list().first_page()
    assert (denied.value.status, denied.value.type) == (403, "permission_error")

    key = f"sdk-reused-{time.time_ns()}"
    await hub.payments.create(amount=700, currency="CNY", payment_method=CARD_METHOD, idempotency_key=key)
    again = await hub.payments.create(
        amount=700, currency="CNY", payment_method=CARD_METHOD, idempotency_key=key
    )
    assert again.amount == 700  # same key, same body: the first answer replayed
    with pytest.raises(errors.IdempotencyError) as reused:
        await hub.payments.create(amount=701, currency="CNY", payment_method=CARD_METHOD, idempotency_key=key)
    assert (reused.value.status, reused.value.code) == (422, "idempotency_key_reused")

    async with AsyncPayhub(url=hub_stack.url, **hub_stack.tls("ops")) as operator:
        with pytest.raises(errors.PermissionDeniedError):
            await operator.payments.get("pay_x")
        assert (await operator.reviews.list().first_page()).object == "list"

    closed = f"https://localhost:{hub_stack.ops_port + 0}"  # plain HTTP there: TLS fails
    async with AsyncPayhub(url=closed, max_retries=1, backoff_base=0.01, **hub_stack.tls()) as nowhere:
        with pytest.raises(errors.APIConnectionError):
            await nowhere.ping()


async def test_accounts_topup_and_balance_payment(hub: AsyncPayhub, unique: str) -> None:
    customer = f"cus_sdk_acct_{unique}"
    account = await hub.accounts.create("CNY", customer=customer)
    assert account.balance.available == 0 and account.customer == customer
    topup = await hub.accounts.topup(account.id, amount=10_000, currency="CNY", payment_method=CARD_METHOD)
    assert topup.status == "succeeded" and topup.destination == account.id
    spent = await hub.payments.create(
        amount=2_500,
        currency="CNY",
        payment_method={"type": "balance", "balance": {"account": account.id}},
        customer={"id": customer},
    )
    assert spent.status == "succeeded", spent
    assert (await hub.accounts.get(account.id)).balance.available == 7_500
    entries = [e async for e in hub.accounts.entries(account.id, limit=1)]
    assert len(entries) >= 2 and {e.currency for e in entries} == {"CNY"}


async def test_preferences_reminders_fx(hub: AsyncPayhub, unique: str) -> None:
    customer = f"cus_sdk_prefs_{unique}"
    defaults = await hub.preferences.get(customer)
    assert defaults.updated is None
    prefs = await hub.preferences.put(customer, locale="zh-CN", theme="dark", font_scale=1.25)
    assert (prefs.locale, prefs.theme, prefs.font_scale) == ("zh-CN", "dark", 1.25)
    assert (await hub.preferences.get(customer)).theme == "dark"

    reminder = await hub.reminders.create(
        type="bill_due",
        customer=customer,
        biller="bil_cn_water",
        customer_params={"account_number": "0031234567"},
    )
    assert reminder.status == "active"
    assert [r.id async for r in hub.reminders.list(customer=customer)] == [reminder.id]
    assert (await hub.reminders.get(reminder.id)).biller == "bil_cn_water"
    assert (await hub.reminders.delete(reminder.id)).status == "deleted"

    rates = await hub.fx.rates(base="USD")
    assert rates.base == "USD" and "CNY" in rates.rates
    quote = await hub.fx.quote(from_currency="CNY", to_currency="USD", to_amount=1_000)
    assert quote.to_amount == 1_000 and quote.from_amount > 1_000 and not quote.used


async def test_webhooks_signed_deliveries_and_rotation(hub: AsyncPayhub, unique: str) -> None:
    """A real receiver: each delivery verifies with the endpoint's secret; after a rotation with
    overlap it carries two signatures, so the old and the new secret (alone or together) verify."""
    received: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        await received.put((await request.read(), request.headers[webhooks.HEADER]))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    endpoint = await hub.webhook_endpoints.create(
        url=f"http://127.0.0.1:{port}/hook", enabled_events=["payment.succeeded"], description=f"sdk {unique}"
    )
    try:
        assert endpoint.secret.startswith("whsec_")
        assert endpoint.id in [e.id async for e in hub.webhook_endpoints.list()]
        payment = await hub.payments.create(amount=4_242, currency="CNY", payment_method=CARD_METHOD)
        body, header = await asyncio.wait_for(received.get(), 20)
        event = webhooks.verify(body, header, endpoint.secret)
        assert event.type == "payment.succeeded" and event.data_object["id"] == payment.id
        assert (await hub.events.get(event.id)).id == event.id
        assert event.id in [e.id for e in await hub.events.list(type="payment.succeeded", limit=5).collect(5)]

        rotated = await hub.webhook_endpoints.rotate_secret(endpoint.id, expires_in=3600)
        await hub.payments.create(amount=4_243, currency="CNY", payment_method=CARD_METHOD)
        body, header = await asyncio.wait_for(received.get(), 20)
        assert header.count("v1=") == 2
        for secrets in (endpoint.secret, rotated.secret, [rotated.secret, endpoint.secret]):
            assert webhooks.verify(body, header, secrets).type == "payment.succeeded"
        with pytest.raises(webhooks.SignatureVerificationError):
            webhooks.verify(body + b" ", header, [rotated.secret, endpoint.secret])
    finally:
        deleted = await hub.webhook_endpoints.delete(endpoint.id)
        assert deleted.deleted
        await runner.cleanup()
