"""Errors raised by the client, one class per ``error.type`` the hub answers::

    PayhubError                      anything this package raises about a request
    ├── InvalidRequestError          invalid_request_error (400, 404, 405, 409, 413; a wrong OTP too)
    ├── AuthenticationError          authentication_error (403: certificate not accepted)
    ├── PermissionDeniedError        permission_error (403: role not allowed)
    ├── IdempotencyError             idempotency_error (409 request_in_progress, 422 key reused)
    ├── RateLimitError               rate_limit_error (429)
    ├── PaymentError                 payment_error
    ├── APIError                     api_error (5xx) and any answer that is not a payhub error body
    └── APIConnectionError           no answer at all (connection refused, cut, timed out) after retries

Every error carries ``status`` (HTTP status, 0 when there was no answer), ``type``, ``code``,
``message``, ``param`` and ``request_id`` (the ``Request-Id`` the hub logged the request under; quote
it when asking the hub's operators about a request).

A declined payment is **not** an error: it is a :class:`~payhub_client.models.Payment` with
``status == "failed"`` and ``failure.code``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "IdempotencyError",
    "InvalidRequestError",
    "PayhubError",
    "PaymentError",
    "PermissionDeniedError",
    "RateLimitError",
    "error_from_response",
]


class PayhubError(Exception):
    """Base class: the hub refused or failed a request, or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        type: str = "api_error",
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.body = body
        self.headers = headers or {}

    def __str__(self) -> str:
        parts = [self.message]
        details = []
        if self.status:
            details.append(str(self.status))
        if self.code:
            details.append(self.code)
        if self.param:
            details.append(f"param={self.param}")
        if self.request_id:
            details.append(f"request_id={self.request_id}")
        if details:
            parts.append(f"({', '.join(details)})")
        return " ".join(parts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, type={self.type!r}, code={self.code!r}, "
            f"param={self.param!r}, request_id={self.request_id!r}, message={self.message!r})"
        )


class InvalidRequestError(PayhubError):
    """The request was refused before any processing: fix it (``param`` names the field)."""


class AuthenticationError(PayhubError):
    """The client certificate was not accepted (unknown, revoked, or its tenant disabled)."""


class PermissionDeniedError(PayhubError):
    """The certificate's role may not use this route."""


class IdempotencyError(PayhubError):
    """The Idempotency-Key is in use by a running request, or was used for a different request."""


class RateLimitError(PayhubError):
    """Too many requests; retried automatically, raised once the retries are spent."""


class PaymentError(PayhubError):
    """The hub refused a payment operation."""


class APIError(PayhubError):
    """The hub failed (5xx) or answered something that is not a payhub error."""


class APIConnectionError(PayhubError):
    """No answer from the hub (refused, cut or timed out), after the retries allowed."""


ERROR_TYPES: dict[str, type[PayhubError]] = {
    "invalid_request_error": InvalidRequestError,
    "authentication_error": AuthenticationError,
    "permission_error": PermissionDeniedError,
    "idempotency_error": IdempotencyError,
    "rate_limit_error": RateLimitError,
    "payment_error": PaymentError,
    "api_error": APIError,
}


def error_from_response(status: int, body: Any, headers: dict[str, str]) -> PayhubError:
    """The error for a non-2xx answer: its ``error`` object when it has one, else an APIError."""
    request_id = headers.get("Request-Id")
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        text = body if isinstance(body, str) else f"HTTP {status}"
        return APIError(
            (text or f"HTTP {status}")[:500],
            status=status,
            request_id=request_id,
            body=body,
            headers=headers,
        )
    error_type = str(error.get("type") or "api_error")
    cls = ERROR_TYPES.get(error_type, APIError)
    param = error.get("param")
    code = error.get("code")
    return cls(
        str(error.get("message") or f"HTTP {status}"),
        status=status,
        type=error_type,
        code=str(code) if code is not None else None,
        param=str(param) if param is not None else None,
        request_id=str(error.get("request_id") or request_id or "") or None,
        body=body,
        headers=headers,
    )
