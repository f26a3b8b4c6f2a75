"""Route classes decide budgets and shedding order; they must hold for routes that land later."""

from __future__ import annotations

import pytest

from gateway.traffic.classes import RouteClass, classify


@pytest.mark.parametrize(
    ("method", "template", "expected"),
    [
        ("POST", "/v1/payments", RouteClass.PAYMENT_WRITE),
        ("POST", "/v1/payments/{id}/capture", RouteClass.PAYMENT_WRITE),
        ("POST", "/v1/payments/{payment}/confirm", RouteClass.PAYMENT_WRITE),
        ("POST", "/v1/payments/{id}/cancel", RouteClass.PAYMENT_WRITE),
        ("POST", "/v1/refunds", RouteClass.PAYMENT_WRITE),
        ("POST", "/v1/accounts/{id}/topups", RouteClass.PAYMENT_WRITE),
        ("GET", "/v1/payments", RouteClass.READ),
        ("GET", "/v1/payments/{id}", RouteClass.READ),
        ("GET", "/v1/ping", RouteClass.READ),
        ("GET", "/v1/billers", RouteClass.READ),
        ("HEAD", "/v1/billers/{id}", RouteClass.READ),
        ("POST", "/v1/ping", RouteClass.WRITE),
        ("POST", "/v1/tokens", RouteClass.WRITE),
        ("POST", "/v1/accounts", RouteClass.WRITE),
        ("PUT", "/v1/customers/{id}/preferences", RouteClass.WRITE),
        ("DELETE", "/v1/reminders/{id}", RouteClass.WRITE),
        ("POST", "/v1/payments/{id}/refund_all", RouteClass.WRITE),  # not a money route by name
        ("POST", "/v1/payments/{id}/capture/extra", RouteClass.WRITE),
        ("GET", "/v1/reviews", RouteClass.OPS),
        ("POST", "/v1/reviews/{id}/approve", RouteClass.OPS),
        ("POST", "/v1/admin/tenants", RouteClass.OPS),
        ("GET", "unmatched", RouteClass.READ),
        ("POST", "unmatched", RouteClass.WRITE),
    ],
)
def test_route_classes(method: str, template: str, expected: RouteClass) -> None:
    assert classify(method, template) is expected
