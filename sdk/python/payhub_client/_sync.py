"""``Payhub``: the asynchronous client behind blocking calls.

One private event loop runs in a daemon thread for the life of the client; each call is submitted to
it and waited for, so connections are pooled across calls and the retry rules are the async
client's, unchanged. Lists become plain iterators. Safe to call from several threads; do not call it
from inside that private loop (nor from a coroutine: use :class:`AsyncPayhub` there).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

from ._client import (
    Accounts,
    AsyncPager,
    AsyncPayhub,
    Billers,
    Bills,
    Devices,
    Events,
    Fx,
    Payments,
    PreferencesResource,
    Refunds,
    Reminders,
    Reviews,
    Tokens,
    WebhookEndpoints,
)
from .models import Page, Ping

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _Runner:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="payhub-client", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        if self.loop.is_closed():
            coro.close()
            raise RuntimeError("the Payhub client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


async def _next(iterator: AsyncIterator[T]) -> tuple[bool, T | None]:
    try:
        return True, await iterator.__anext__()
    except StopAsyncIteration:
        return False, None


class SyncPager(Generic[T]):
    """An auto-paging list as a plain iterator."""

    def __init__(self, runner: _Runner, pager: AsyncPager[T]) -> None:
        self._runner = runner
        self._pager = pager

    def __iter__(self) -> Iterator[T]:
        iterator = self._pager.__aiter__()
        while True:
            more, item = self._runner.run(_next(iterator))
            if not more:
                return
            yield item  # type: ignore[misc]  # present whenever more is True

    def first_page(self) -> Page[T]:
        return self._runner.run(self._pager.first_page())

    def collect(self, max_items: int | None = None) -> list[T]:
        return self._runner.run(self._pager.collect(max_items))


class _SyncResource:
    def __init__(self, runner: _Runner, target: Any) -> None:
        self._runner = runner
        self._target = target


def _blocking(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[_SyncResource, P], R]:
    def call(self: _SyncResource, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._runner.run(method(self._target, *args, **kwargs))

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


def _paging(
    method: Callable[Concatenate[Any, P], AsyncPager[T]],
) -> Callable[Concatenate[_SyncResource, P], SyncPager[T]]:
    def call(self: _SyncResource, /, *args: P.args, **kwargs: P.kwargs) -> SyncPager[T]:
        return SyncPager(self._runner, method(self._target, *args, **kwargs))

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


class SyncBillers(_SyncResource):
    list = _paging(Billers.list)
    get = _blocking(Billers.get)


class SyncBills(_SyncResource):
    fetch = _blocking(Bills.fetch)


class SyncPayments(_SyncResource):
    create = _blocking(Payments.create)
    get = _blocking(Payments.get)
    list = _paging(Payments.list)
    confirm = _blocking(Payments.confirm)
    capture = _blocking(Payments.capture)
    cancel = _blocking(Payments.cancel)


class SyncRefunds(_SyncResource):
    create = _blocking(Refunds.create)
    get = _blocking(Refunds.get)
    list = _paging(Refunds.list)


class SyncAccounts(_SyncResource):
    create = _blocking(Accounts.create)
    get = _blocking(Accounts.get)
    entries = _paging(Accounts.entries)
    topup = _blocking(Accounts.topup)


class SyncTokens(_SyncResource):
    create = _blocking(Tokens.create)


class SyncReminders(_SyncResource):
    create = _blocking(Reminders.create)
    list = _paging(Reminders.list)
    get = _blocking(Reminders.get)
    delete = _blocking(Reminders.delete)


class SyncPreferences(_SyncResource):
    get = _blocking(PreferencesResource.get)
    put = _blocking(PreferencesResource.put)


class SyncWebhookEndpoints(_SyncResource):
    create = _blocking(WebhookEndpoints.create)
    list = _paging(WebhookEndpoints.list)
    get = _blocking(WebhookEndpoints.get)
    delete = _blocking(WebhookEndpoints.delete)
    rotate_secret = _blocking(WebhookEndpoints.rotate_secret)


class SyncEvents(_SyncResource):
    list = _paging(Events.list)
    get = _blocking(Events.get)
    redeliver = _blocking(Events.redeliver)


class SyncFx(_SyncResource):
    rates = _blocking(Fx.rates)
    quote = _blocking(Fx.quote)
    get_quote = _blocking(Fx.get_quote)


class SyncDevices(_SyncResource):
    create = _blocking(Devices.create)


class SyncReviews(_SyncResource):
    list = _paging(Reviews.list)
    approve = _blocking(Reviews.approve)
    reject = _blocking(Reviews.reject)


class Payhub:
    """The blocking client: same arguments and resources as :class:`AsyncPayhub`, without ``await``.

    ::

        with Payhub(url="https://localhost:8443", p12="acme.p12", cacert="ca.pem") as hub:
            for payment in hub.payments.list(status="succeeded"):
                print(payment.id)
    """

    def __init__(self, url: str | None = None, **options: Any) -> None:
        self._runner = _Runner()
        self.client = AsyncPayhub(url, **options) if url is not None else AsyncPayhub(**options)
        runner, client = self._runner, self.client
        self.url = client.url
        self.billers = SyncBillers(runner, client.billers)
        self.bills = SyncBills(runner, client.bills)
        self.payments = SyncPayments(runner, client.payments)
        self.refunds = SyncRefunds(runner, client.refunds)
        self.accounts = SyncAccounts(runner, client.accounts)
        self.tokens = SyncTokens(runner, client.tokens)
        self.reminders = SyncReminders(runner, client.reminders)
        self.preferences = SyncPreferences(runner, client.preferences)
        self.webhook_endpoints = SyncWebhookEndpoints(runner, client.webhook_endpoints)
        self.events = SyncEvents(runner, client.events)
        self.fx = SyncFx(runner, client.fx)
        self.devices = SyncDevices(runner, client.devices)
        self.reviews = SyncReviews(runner, client.reviews)

    def ping(self) -> Ping:
        return self._runner.run(self.client.ping())

    def openapi(self) -> dict[str, Any]:
        return self._runner.run(self.client.openapi())

    def close(self) -> None:
        if not self._runner.loop.is_closed():
            self._runner.run(self.client.close())
        self._runner.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
