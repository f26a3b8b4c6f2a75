"""Request bodies for the checker, from DESIGN §12's sandbox test data."""

from __future__ import annotations

from typing import Any

# Test cards: number → (status, failure code) the hub must answer.
CARDS: dict[str, tuple[str, str | None]] = {
    "4111111111111111": ("succeeded", None),
    "5555555555554444": ("succeeded", None),
    "6212345678901265": ("succeeded", None),
    "4000000000000002": ("failed", "do_not_honor"),
    "4000000000009995": ("failed", "insufficient_funds"),
    "4000000000000069": ("failed", "expired_card"),
    "4000000000000127": ("failed", "incorrect_cvc"),
    "4000000000000119": ("failed", "connector_unavailable"),  # acquirer time-out: reversed, never charged
    "4000000000000259": ("succeeded", None),  # slow acquirer (3 s)
}
APPROVED = "4111111111111111"
SLOW = "4000000000000259"
TIMEOUT = "4000000000000119"
# Bank account endings: settles by callback; poll only; rejected; calls back twice.
BANK_SUFFIXES = ("1111", "4321", "0005", "0002", "0009")
UTILITY_BILLERS = ("bil_cn_power", "bil_cn_water", "bil_cn_gas")
FX_BILLER = "bil_us_power"  # billed in USD, paid in CNY with a quote
# Utility account endings: posted; rejected at posting (refunded); posting times out then confirmed;
# no dues.
POSTED, REJECTED, LATE, NO_DUES = "4567", "9999", "7777", "0000"
BILL_SUFFIXES = (POSTED, "1234", REJECTED, LATE, NO_DUES)
MSISDNS = ("+8613812345678", "+8613912345678", "+8613812347777")  # …7777 completes asynchronously
DENOMINATIONS = (1000, 3000, 5000, 10000)
BILL_METHODS = ("card", "bank", "wallet", "balance")


def card(
    number: str, amount: int, customer: str | None = None, *, capture: str = "automatic"
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "amount": amount,
        "currency": "CNY",
        "payment_method": method("card", number),
        "capture_method": capture,
    }
    if customer is not None:
        body["customer"] = {"id": customer}
    return body


def method(kind: str, detail: str) -> dict[str, Any]:
    """A payment_method: the card number, the bank account's last four digits, the wallet provider,
    the prepaid code or the balance account."""
    block: dict[str, Any]
    if kind == "card":
        block = {"number": detail, "exp_month": 12, "exp_year": 2030, "cvc": "123", "holder_name": "Li Lei"}
    elif kind == "bank_transfer":
        block = {"account_number": "622200001111" + detail}
    else:
        block = {{"wallet": "provider", "prepaid": "code", "balance": "account"}[kind]: detail}
    return {"type": kind, kind: block}


def bill_method(by: str, account: str | None) -> dict[str, Any] | None:
    """How a bill or phone top-up is paid: card, bank transfer, wallet, or a stored balance."""
    if by == "card":
        return method("card", APPROVED)
    if by == "bank":
        return method("bank_transfer", "1111")
    if by == "wallet":
        return method("wallet", "alipay")
    return method("balance", account) if account else None


def payment(amount: int, pay: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"amount": amount, "currency": "CNY", "payment_method": pay, **extra}


def utility_bill(biller: str, account_number: str, bill_ref: str) -> dict[str, Any]:
    return {"biller": biller, "customer_params": {"account_number": account_number}, "bill_ref": bill_ref}


def phone(msisdn: str) -> dict[str, Any]:
    return {"biller": "bil_cn_mobile", "customer_params": {"msisdn": msisdn}}


def fx_quote(to_amount: int) -> dict[str, Any]:
    return {"from_currency": "CNY", "to_currency": "USD", "to_amount": to_amount}
