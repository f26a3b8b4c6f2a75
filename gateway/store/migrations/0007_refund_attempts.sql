-- A refund's connector attempt names its refund, so the resolver can settle a refund whose outcome
-- at the connector was unknown.
ALTER TABLE payment_attempts ADD COLUMN refund_id text;
