-- Money on one path: every external movement is an attempt recorded before the call, and the
-- resolver settles every attempt left unfinished (DESIGN §7).

-- A bill reversal (冲正) is an attempt of its own, recorded before it is sent.
ALTER TABLE payment_attempts DROP CONSTRAINT payment_attempts_operation_check;
ALTER TABLE payment_attempts ADD CONSTRAINT payment_attempts_operation_check
    CHECK (operation IN ('authorize', 'capture', 'void', 'refund', 'post_bill', 'reverse_bill'));

-- An attempt is due for the resolver as soon as it is written: a `started` one becomes due once
-- the request that made it has had time to finish (a crash leaves it there), `pending`/`unknown`
-- ones at their back-off. A final attempt has no next check.
ALTER TABLE payment_attempts ALTER COLUMN next_check SET DEFAULT now() + interval '30 seconds';
UPDATE payment_attempts SET next_check = coalesce(next_check, now())
    WHERE status IN ('started', 'pending', 'unknown');
UPDATE payment_attempts SET next_check = NULL WHERE status IN ('succeeded', 'failed');
DROP INDEX payment_attempts_due;
CREATE INDEX payment_attempts_due ON payment_attempts (next_check)
    WHERE status IN ('started', 'pending', 'unknown');
-- One post and at most one reversal per bill payment, whatever the retries.
CREATE UNIQUE INDEX payment_attempts_one_bill_post ON payment_attempts (payment_id)
    WHERE operation = 'post_bill';
CREATE UNIQUE INDEX payment_attempts_one_bill_reversal ON payment_attempts (payment_id)
    WHERE operation = 'reverse_bill';
-- One refund row per refund attempt, found by the resolver.
CREATE INDEX payment_attempts_refund ON payment_attempts (refund_id) WHERE refund_id IS NOT NULL;
