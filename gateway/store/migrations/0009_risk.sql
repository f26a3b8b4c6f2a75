-- Risk (DESIGN §9): velocity counters, lists, step-up challenges, devices and the review queue.

-- Rolling velocity buckets per key: minute buckets serve the 1 min and 1 h windows, hour buckets
-- the 24 h window, so a read sums at most 60 + 24 rows per key. A payment bumps its keys once, in
-- the statement that records it (idempotent per payment); a decline bumps `declines` once, when
-- the decline is applied. amount_usd is in US cents.
CREATE TABLE risk_counters (
    tenant     text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('card', 'customer', 'ip', 'device', 'msisdn')),
    key        text NOT NULL,
    grain      char(1) NOT NULL CHECK (grain IN ('m', 'h')),
    bucket     timestamptz NOT NULL,
    count      integer NOT NULL DEFAULT 0 CHECK (count >= 0),
    amount_usd bigint NOT NULL DEFAULT 0 CHECK (amount_usd >= 0),
    declines   integer NOT NULL DEFAULT 0 CHECK (declines >= 0),
    PRIMARY KEY (tenant, kind, key, grain, bucket)
);
CREATE INDEX risk_counters_bucket ON risk_counters (bucket);

-- Distinct values seen per key (MSISDNs topped up per customer and per device): the distinct
-- count over a window is the number of rows seen within it.
CREATE TABLE risk_seen (
    tenant    text NOT NULL,
    kind      text NOT NULL CHECK (kind IN ('customer_msisdn', 'device_msisdn')),
    key       text NOT NULL,
    value     text NOT NULL,
    last_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, kind, key, value)
);

-- Allow and deny lists managed by operators (/v1/admin/lists); tenant NULL applies to every tenant.
CREATE TABLE risk_list_entries (
    id         text PRIMARY KEY CHECK (id LIKE 'rle\_%'),
    tenant     text,
    list       text NOT NULL CHECK (list IN ('allow', 'deny')),
    kind       text NOT NULL CHECK (kind IN ('ip', 'email', 'customer', 'device', 'msisdn', 'bin')),
    value      text NOT NULL,
    note       text,
    created_by text NOT NULL,
    created    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX risk_list_entries_unique ON risk_list_entries (coalesce(tenant, ''), list, kind, value);
CREATE INDEX risk_list_entries_lookup ON risk_list_entries (kind, value);

-- Devices registered for device-signature step-up: an Ed25519 public key per customer device.
CREATE TABLE risk_devices (
    id          text PRIMARY KEY CHECK (id LIKE 'dvc\_%'),
    tenant      text NOT NULL,
    customer_id text NOT NULL,
    device_id   text NOT NULL,
    public_key  bytea NOT NULL CHECK (length(public_key) = 32),
    created     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, customer_id, device_id)
);

-- One open challenge per payment. An OTP is kept only as an HMAC; a device challenge is a nonce
-- the device signs together with the payment id and amount. Used once: `status` leaves `open` once.
CREATE TABLE risk_challenges (
    id          text PRIMARY KEY CHECK (id LIKE 'chl\_%'),
    payment_id  text NOT NULL UNIQUE REFERENCES payments (id),
    tenant      text NOT NULL,
    customer_id text,
    kind        text NOT NULL CHECK (kind IN ('otp', 'device_signature')),
    secret      bytea NOT NULL,          -- HMAC of the OTP, or the device nonce
    device      text REFERENCES risk_devices (id),
    tries       integer NOT NULL DEFAULT 0 CHECK (tries >= 0),
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'passed', 'failed', 'expired')),
    expires     timestamptz NOT NULL,
    created     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX risk_challenges_customer ON risk_challenges (tenant, customer_id, created DESC)
    WHERE customer_id IS NOT NULL;
CREATE INDEX risk_challenges_open ON risk_challenges (expires) WHERE status = 'open';

-- Five wrong answers lock the customer's step-up for a while (DESIGN §9).
CREATE TABLE risk_lockouts (
    tenant      text NOT NULL,
    customer_id text NOT NULL,
    until       timestamptz NOT NULL,
    PRIMARY KEY (tenant, customer_id)
);

-- A payment held for step-up or review keeps what its connector call will need and is not a
-- secret (a bank account number, a wallet provider); a card is resumed from its vault token.
ALTER TABLE payments ADD COLUMN held_details jsonb;
-- The velocity keys the payment was counted under ([[kind, key], …]): a decline is counted under
-- the same keys when it is applied. Never shown (the card key is the vault's HMAC fingerprint).
ALTER TABLE payments ADD COLUMN risk_keys jsonb;
-- "New device": the customer has no succeeded payment from this device yet.
CREATE INDEX payments_customer_device ON payments (tenant, customer_id, (customer ->> 'device_id'))
    WHERE status = 'succeeded' AND customer_id IS NOT NULL;
-- The review queue, oldest first.
CREATE INDEX payments_under_review ON payments (created, id) WHERE status = 'under_review';
