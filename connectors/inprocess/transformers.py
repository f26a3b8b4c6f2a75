"""Pure outcome rules of the sandbox test data (DESIGN §12): which input gives which answer."""

from __future__ import annotations

import re
from typing import Final

from connectors.base import ConnectorResult, Outcome

APPROVED: Final = ConnectorResult(Outcome.SUCCEEDED)

# Card number → (decline code, ISO 8583 response code). Unlisted valid cards are approved.
CARD_DECLINES: Final[dict[str, tuple[str, str]]] = {
    "4000000000000002": ("do_not_honor", "05"),
    "4000000000009995": ("insufficient_funds", "51"),
    "4000000000000069": ("expired_card", "54"),
    "4000000000000127": ("incorrect_cvc", "N7"),
    # No answer from the acquirer: the real connector reverses; the payment fails, never charged.
    "4000000000000119": ("connector_unavailable", "91"),
}
SLOW_CARD: Final = "4000000000000259"
SLOW_CARD_DELAY: Final = 3.0

PREPAID_CODE: Final = re.compile(r"^PP-\d{8}$")
PREPAID_VALUE_MAJOR: Final = 100


def card_outcome(number: str) -> ConnectorResult:
    decline = CARD_DECLINES.get(number)
    if decline is None:
        return APPROVED
    code, raw = decline
    return ConnectorResult(Outcome.FAILED, decline_code=code, raw_code=raw, message=code.replace("_", " "))


def bank_rejects(account_number: str) -> bool:
    return account_number.endswith("0002")
