"""The dev/sandbox default rules (DESIGN §12), as data.

``config/payhub.toml`` carries the same rules for the running hub; keeping them here too lets
tests and the micro-benchmark use them without a config file. They are tuned so that an
ordinary small payment (a known device or none, no velocity, no list hit) is ``allow`` with
score 0, and each rule stands for one fraud pattern named by its id.
"""

from __future__ import annotations

from risk.rules import Action, Ruleset, RuleSpec

DEFAULT_RULES: tuple[RuleSpec, ...] = (
    RuleSpec(
        id="deny_list",
        when="lists.deny",
        action=Action.BLOCK,
        message="the IP, e-mail, card or device is on the deny list",
    ),
    # Negative score: an allow-listed customer is not challenged by score, while forced actions
    # (deny list, card testing) still apply.
    RuleSpec(
        id="allow_list",
        when="lists.allow",
        score=-100,
        message="the customer or card is on the allow list",
    ),
    RuleSpec(
        id="new_device_high_amount",
        when="device.new && amount_usd >= 2000.0",
        action=Action.CHALLENGE,
        message="2,000 USD or more from a device this customer has not used before",
    ),
    RuleSpec(
        id="very_high_amount",
        when="amount_usd >= 5000.0",
        action=Action.REVIEW,
        message="5,000 USD or more",
    ),
    RuleSpec(
        id="card_testing",
        when="velocity.ip.h1.declines >= 5 || velocity.device.h1.declines >= 5",
        action=Action.BLOCK,
        message="many declines from this IP or device in the last hour (card testing)",
    ),
    RuleSpec(
        id="topup_burst",
        when="velocity.customer.h1.distinct_msisdn >= 5 || velocity.device.h1.distinct_msisdn >= 5",
        action=Action.REVIEW,
        message="top-ups to many phone numbers in the last hour",
    ),
    RuleSpec(
        id="country_mismatch_high_amount",
        when="countries_mismatch && amount_usd >= 500.0",
        score=60,
        message="card, IP and phone countries disagree on a payment of 500 USD or more",
    ),
    RuleSpec(
        id="just_under_limit",
        when="amount_usd >= 4500.0 && amount_usd < 5000.0",
        score=30,
        message="amount just under the review limit",
    ),
    RuleSpec(
        id="velocity_card_burst",
        when="velocity.card.m1.count >= 5",
        score=50,
        message="five or more payments with this card in the last minute",
    ),
    RuleSpec(
        id="otp_failures",
        when="otp_failures_24h >= 3",
        score=40,
        message="three or more failed OTPs in the last 24 hours",
    ),
)


def default_ruleset() -> Ruleset:
    return Ruleset.compile(DEFAULT_RULES)
