"""Phase 1 of a connector payment in one statement (issue #13): claim the Idempotency-Key, vault the
card, record the payment, its first attempt and the key's recovery point, count the payment's
velocity keys, and read its risk features — one round trip, one commit.

Everything after the claim depends on it: the payment is inserted only when this statement took the
key new (the key then names the payment as its object, recovery point ``attempt_created``). A key
that exists answers as :func:`gateway.store.idempotency.claim` would (replay, in progress, mismatch,
or a take-over to resume), and nothing else is written but the card, which is harmless. A card
vaulted by a concurrent request after this statement's snapshot leaves the card CTE empty; then
nothing is claimed either and the caller takes the step-by-step path.

The risk features are read in the statement's snapshot, before this payment is counted: the same
read as on the step-by-step path. The decision is made after the statement, so the payment is
recorded before it is known; the payment's first attempt is not sent until it is (see
PaymentService: a resumed payment without a decision is screened again first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.store import idempotency
from gateway.store.compose import shift
from gateway.store.idempotency import ClaimResult
from gateway.store.payments import (
    ATTEMPT_CTE,
    PAYMENT_COLUMNS,
    PAYMENT_FIELDS,
    PAYMENT_INSERT,
    PAYMENT_PARAMS,
    NewPayment,
    Payment,
    payment_args,
)
from gateway.store.risk import count_ctes
from gateway.store.types import Connection, Rider
from gateway.store.vault import CARD_FIELDS, VAULT_CTES, SealedCard, StoredCard, card_columns, stored_card

RECOVERY_POINT = "attempt_created"
_VAULT_PARAMS = 12
_CLAIM_PARAMS = 6  # tenant, key, method, path, request hash, lock seconds


@dataclass(frozen=True, slots=True)
class Intake:
    """What the statement did: the claim (None: nothing claimed, take the step-by-step path), the
    card, the payment row and version when it was recorded, and the rider's columns."""

    claim: ClaimResult | None
    card: StoredCard | None
    payment: tuple[Payment, str] | None
    riding: tuple[Any, ...] | None


def _statement(*, vault: bool, rider: Rider | None) -> tuple[str, int, int]:
    """The statement's SQL, the number of its own parameters (the rider's follow) and of the columns
    before the rider's."""
    at = _VAULT_PARAMS if vault else 0  # the claim's parameters follow the vault's…
    payment_at = at + _CLAIM_PARAMS  # …the payment's the claim's; then its attempt id and the counts
    attempt_id = payment_at + PAYMENT_PARAMS + 1
    own = attempt_id + 6  # count_ctes takes six
    if vault:
        method = "jsonb_set($6::jsonb, '{card,token}', to_jsonb(card.id))"  # the card's token, new or on file
        source, card_join, card_select = ", card", "\nLEFT JOIN card ON true", ", " + card_columns("card_")
    else:
        method, source, card_join, card_select = "$6::jsonb", "", "", ""
    source = f"\n    FROM claim{source} WHERE claim.object_id = $1"
    payment = PAYMENT_INSERT.format(method=method, source=source)
    # The key names the payment ($1 of the payment's parameters) as its object from the start: both
    # are written by this statement or neither is.
    claim = f"""claim AS (
    INSERT INTO idempotency_keys AS k
        (tenant, key, request_method, request_path, request_hash, locked_until, recovery_point, object_id)
    SELECT $1, $2, $3, $4, $5, now() + make_interval(secs => $6), '{RECOVERY_POINT}', ${_CLAIM_PARAMS + 1}
    {"FROM card" if vault else ""}{idempotency.TAKE_OVER}
), existing AS (
    SELECT request_method, request_path, request_hash, response_status, response_body
    FROM idempotency_keys WHERE tenant = $1 AND key = $2 AND NOT EXISTS (SELECT 1 FROM claim)
)"""  # noqa: S608 - fixed fragments
    riding, rider_join = "", ""
    if rider is not None:
        riding, rider_join = ", rider.*", f"\nCROSS JOIN ({rider.select(own + 1)}) AS rider"
    sql = f"""{VAULT_CTES + "," if vault else "WITH"}
{shift(claim, at)}, payment AS ({shift(payment, payment_at)}
){count_ctes(payment_at + 2, attempt_id + 1)}, {shift(ATTEMPT_CTE, payment_at)}
SELECT p.*, c.recovery_point AS claim_point, c.object_id AS claim_object, c.locked_until AS claim_lock,
       e.request_method, e.request_path, e.request_hash, e.response_status,
       e.response_body{card_select}{riding}
FROM (SELECT 1) AS one
LEFT JOIN claim c ON true
LEFT JOIN existing e ON true{card_join}
LEFT JOIN (SELECT {PAYMENT_COLUMNS}, version FROM payment) p ON true{rider_join}
"""  # noqa: S608 - fixed fragments and parameter numbers
    before_rider = PAYMENT_FIELDS + 1 + 3 + 5 + (CARD_FIELDS if vault else 0)
    return sql, own, before_rider


async def intake(
    conn: Connection,
    *,
    card: SealedCard | None,
    claim: tuple[str, str, str, str, bytes],  # tenant, key, method, path, request hash
    payment: NewPayment,
    attempt_id: str,
    rider: Rider | None,
) -> Intake:
    sql, own, before_rider = _statement(vault=card is not None, rider=rider)
    args: tuple[object, ...] = (
        *(card.args if card is not None else ()),
        *claim,
        idempotency.LOCK_SECONDS,
        *payment_args(payment),
        attempt_id,
        *payment.risk_keys.args(),
    )
    assert len(args) == own, (len(args), own)
    row = await conn.fetchrow(sql, *args, *(rider.args if rider is not None else ()))
    assert row is not None  # one row, whatever was written
    stored = stored_card(row, "card_") if card is not None else None
    recorded = (Payment.of(row), row["version"]) if row[0] is not None else None
    riding = tuple(row)[before_rider:] if rider is not None else None
    result: ClaimResult | None = None  # the card CTE was empty (nothing claimed), or the key vanished
    if row["claim_point"] is not None:
        result = idempotency.Claimed(row["claim_point"], row["claim_object"], row["claim_lock"])
    elif row["request_method"] is not None:
        method, path, request_hash = claim[2], claim[3], claim[4]
        result = idempotency.answer_for(row, method=method, path=path, request_hash=request_hash)
    return Intake(result, stored, recorded, riding)
