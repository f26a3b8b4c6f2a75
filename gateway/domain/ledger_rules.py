"""Which ledger moves a money movement makes: one pure table (DESIGN §7).

A payment's money comes *from* its funding (the connector's receivable, or the payer's stored
balance) and goes *to* what it is for (the tenant's clearing account, the biller's payable, or the
stored balance a top-up funds). Every rule is written in those two roles, so one table covers
plain payments, bills, top-ups and balance payments:

    movement           outcome      legs
    collect            succeeded    from → to
    collect            pending      from → to, both in the pending bucket (bank top-ups: not spendable yet)
    collect            settled      the pending legs move to available
    collect            failed       the pending legs go back
    refund             reserved     to → from's pending bucket (held while the connector refunds;
                                    a top-up's balance that no longer holds it refuses the refund)
    refund             succeeded    the hold is released to the connector
    refund             failed       the hold goes back to `to`
    refund             direct       to → from at once (balance-funded: no connector involved)

A bill rejected or reversed by its biller is refunded the same way: its `to` is the biller's
payable. Posting to a biller moves no money in the ledger: the payable holds it for settlement.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

Bucket = Literal["available", "pending"]


class Purpose(StrEnum):
    """What the collected money is for (where it goes)."""

    PAYMENT = "payment"  # the tenant's clearing account
    BILL = "bill"  # the biller's payable, until the biller is settled
    TOPUP = "topup"  # the stored balance being funded


class Funding(StrEnum):
    """Where the money comes from."""

    CONNECTOR = "connector"  # a processor took it: the connector's receivable
    BALANCE = "balance"  # the payer's stored balance


class Role(StrEnum):
    FROM = "from"
    TO = "to"


class Movement(StrEnum):
    COLLECT = "collect"
    REFUND = "refund"


class Result(StrEnum):
    SUCCEEDED = "succeeded"
    PENDING = "pending"
    SETTLED = "settled"  # a pending collection that completed
    FAILED = "failed"  # a pending collection or a reserved refund that did not happen
    RESERVED = "reserved"
    DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class Leg:
    source: Role
    destination: Role
    source_bucket: Bucket = "available"
    destination_bucket: Bucket = "available"


_A: Final = "available"
_P: Final = "pending"

RULES: Final[dict[tuple[Movement, Result], tuple[Leg, ...]]] = {
    (Movement.COLLECT, Result.SUCCEEDED): (Leg(Role.FROM, Role.TO),),
    (Movement.COLLECT, Result.PENDING): (Leg(Role.FROM, Role.TO, _P, _P),),
    (Movement.COLLECT, Result.SETTLED): (
        Leg(Role.TO, Role.TO, _P, _A),
        Leg(Role.FROM, Role.FROM, _A, _P),
    ),
    (Movement.COLLECT, Result.FAILED): (Leg(Role.TO, Role.FROM, _P, _P),),
    (Movement.REFUND, Result.RESERVED): (Leg(Role.TO, Role.FROM, _A, _P),),
    (Movement.REFUND, Result.SUCCEEDED): (Leg(Role.FROM, Role.FROM, _P, _A),),
    (Movement.REFUND, Result.FAILED): (Leg(Role.FROM, Role.TO, _P, _A),),
    (Movement.REFUND, Result.DIRECT): (Leg(Role.TO, Role.FROM),),
}

# Ledger transaction kinds, as statements and reports show them.
KINDS: Final[dict[tuple[Movement, Result], str]] = {
    (Movement.COLLECT, Result.SUCCEEDED): "collect",
    (Movement.COLLECT, Result.PENDING): "collect_pending",
    (Movement.COLLECT, Result.SETTLED): "collect_settled",
    (Movement.COLLECT, Result.FAILED): "collect_reversed",
    (Movement.REFUND, Result.RESERVED): "refund_reserved",
    (Movement.REFUND, Result.SUCCEEDED): "refund",
    (Movement.REFUND, Result.FAILED): "refund_released",
    (Movement.REFUND, Result.DIRECT): "refund",
}


def legs(movement: Movement, result: Result) -> tuple[Leg, ...]:
    return RULES[(movement, result)]


def kind(movement: Movement, result: Result, purpose: Purpose) -> str:
    """e.g. ``bill.collect``, ``topup.refund_reserved``."""
    return f"{purpose}.{KINDS[(movement, result)]}"


def collect_result(
    purpose: Purpose, *, captured: bool, pending: bool, failed: bool, pending_booked: bool
) -> Result | None:
    """What a collection outcome books; None when it books nothing.

    Only a top-up books money still in flight (the balance shows it as incoming, not spendable);
    other purposes book once the money is captured.
    """
    if captured:
        return Result.SETTLED if pending_booked else Result.SUCCEEDED
    if pending and purpose is Purpose.TOPUP and not pending_booked:
        return Result.PENDING
    if failed and pending_booked:
        return Result.FAILED
    return None
