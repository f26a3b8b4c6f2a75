-- Issue #16: every terminal policy has a deadline. An attempt whose outcome no automatic step can
-- settle within its connector's inquiry budget goes to the operators' manual queue: it stays in
-- flight (so a late definite answer from the processor or biller still settles it), but it is no
-- longer polled (next_check NULL) and it is listed for operators, with a `payment.manual_review`
-- event and an alert on the queue's size.
ALTER TABLE payment_attempts
    ADD COLUMN manual_review_since  timestamptz,
    ADD COLUMN manual_review_reason text;
CREATE INDEX payment_attempts_manual_review ON payment_attempts (manual_review_since)
    WHERE manual_review_since IS NOT NULL AND status IN ('started', 'pending', 'unknown');
-- A posting parked before this migration was re-checked once a day: it is in the queue now.
UPDATE payment_attempts a SET manual_review_since = a.updated, manual_review_reason = 'posting_unknown',
       next_check = NULL
    FROM payments p
    WHERE p.id = a.payment_id AND a.operation = 'post_bill' AND a.status IN ('started', 'pending', 'unknown')
      AND p.bill_posting->>'status' = 'manual_review';
