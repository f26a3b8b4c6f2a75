-- FX quotes (DESIGN §6 /v1/fx/quotes): a rate plus the configured spread, locked until expires_at.
-- A quote pays one payment: the request that uses it claims it under its Idempotency-Key in one
-- conditional UPDATE, so two payments can never share a quote, and a retry of the same request
-- (same key, after a crash) finds it still its own.
CREATE TABLE fx_quotes (
    id            text PRIMARY KEY CHECK (id LIKE 'fxq\_%'),
    tenant        text NOT NULL,
    from_currency char(3) NOT NULL,
    to_currency   char(3) NOT NULL,
    from_amount   bigint NOT NULL CHECK (from_amount > 0),
    to_amount     bigint NOT NULL CHECK (to_amount > 0),
    fee           bigint NOT NULL CHECK (fee >= 0 AND fee <= from_amount),
    mid_rate      numeric NOT NULL CHECK (mid_rate > 0),
    rate          numeric NOT NULL CHECK (rate > 0 AND rate <= mid_rate),
    spread        numeric NOT NULL CHECK (spread >= 0 AND spread < 1),
    rates_as_of   timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    used_key      text,           -- the Idempotency-Key of the payment request that used it
    used_at       timestamptz,
    created       timestamptz NOT NULL DEFAULT now(),
    CHECK (from_currency <> to_currency),
    CHECK ((used_key IS NULL) = (used_at IS NULL))
);
CREATE INDEX fx_quotes_tenant_created ON fx_quotes (tenant, created DESC, id DESC);
