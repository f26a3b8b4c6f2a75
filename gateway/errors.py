"""API errors and their one mapping to the public error shape (DESIGN §6).

    ApiError                      HTTP status + {"error": {type, code, message, param}}
    ├── InvalidRequest            400 invalid_request_error
    │   ├── NotFound              404 invalid_request_error / resource_missing
    │   ├── MethodNotAllowed      405 invalid_request_error / method_not_allowed
    │   ├── PayloadTooLarge       413 invalid_request_error / request_too_large
    │   └── Conflict              409 invalid_request_error (illegal state transition)
    ├── AuthenticationFailed      403 authentication_error (certificate identity not accepted)
    ├── PermissionDenied          403 permission_error (role may not use the route)
    ├── IdempotencyFailed         422 idempotency_error / idempotency_key_reused
    │   └── IdempotencyInProgress 409 idempotency_error / request_in_progress
    ├── RateLimited               429 rate_limit_error (+ Retry-After)
    ├── Unavailable               503 api_error (+ Retry-After): shed load, dependency down
    └── InternalError             500 api_error (never carries details)

Services raise these (or domain errors mapped to these at the handler boundary); the error
middleware renders them. A lost database connection becomes a 503 ``database_unavailable``
(``gateway.middlewares.database_outage``); anything else a 500 ``api_error`` with no detail.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class ApiError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.headers = headers or {}

    def body(self, request_id: str) -> bytes:
        error: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        error["request_id"] = request_id
        return orjson.dumps({"error": error})


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"
    default_code = "parameter_invalid"


class NotFound(InvalidRequest):
    status = 404
    default_code = "resource_missing"


class MethodNotAllowed(InvalidRequest):
    status = 405
    default_code = "method_not_allowed"


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code = "request_too_large"


class Conflict(InvalidRequest):
    status = 409
    default_code = "invalid_state"


class AuthenticationFailed(ApiError):
    status = 403
    type = "authentication_error"
    default_code = "certificate_not_accepted"


class PermissionDenied(ApiError):
    status = 403
    type = "permission_error"
    default_code = "role_not_allowed"


class IdempotencyFailed(ApiError):
    status = 422
    type = "idempotency_error"
    default_code = "idempotency_key_reused"


class IdempotencyInProgress(IdempotencyFailed):
    status = 409
    default_code = "request_in_progress"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limited"


class Unavailable(ApiError):
    status = 503
    type = "api_error"
    default_code = "service_unavailable"


class InternalError(ApiError):
    status = 500
    type = "api_error"
    default_code = "internal_error"
