"""payhub_client: the Python SDK of the payhub payment gateway.

::

    from payhub_client import AsyncPayhub, Payhub, errors, webhooks

    async with AsyncPayhub(
        url="https://localhost:8443", cert="acme.pem", key="acme.key", cacert="ca.pem"
    ) as hub:
        payment = await hub.payments.create(amount=12850, currency="CNY", payment_method={...})

``Payhub`` is the same API without ``await`` (a private event loop runs it in a thread).
"""

from . import errors, models, webhooks
from ._client import AsyncPager, AsyncPayhub, new_idempotency_key
from ._sync import Payhub, SyncPager
from ._transport import DEFAULT_URL, ssl_context
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    IdempotencyError,
    InvalidRequestError,
    PayhubError,
    PaymentError,
    PermissionDeniedError,
    RateLimitError,
)
from .models import (
    Account,
    Balance,
    Bill,
    Biller,
    Device,
    Event,
    FxQuote,
    FxRates,
    LedgerEntry,
    Page,
    Payment,
    Ping,
    Preferences,
    Refund,
    Reminder,
    Review,
    Token,
    WebhookEndpoint,
    WebhookEndpointWithSecret,
)

__all__ = [
    "DEFAULT_URL",
    "APIConnectionError",
    "APIError",
    "Account",
    "AsyncPager",
    "AsyncPayhub",
    "AuthenticationError",
    "Balance",
    "Bill",
    "Biller",
    "Device",
    "Event",
    "FxQuote",
    "FxRates",
    "IdempotencyError",
    "InvalidRequestError",
    "LedgerEntry",
    "Page",
    "Payhub",
    "PayhubError",
    "Payment",
    "PaymentError",
    "PermissionDeniedError",
    "Ping",
    "Preferences",
    "RateLimitError",
    "Refund",
    "Reminder",
    "Review",
    "SyncPager",
    "Token",
    "WebhookEndpoint",
    "WebhookEndpointWithSecret",
    "__version__",
    "errors",
    "models",
    "new_idempotency_key",
    "ssl_context",
    "webhooks",
]
