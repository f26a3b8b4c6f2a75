-- Webhooks (DESIGN §6): endpoints, and the delivery outbox filled in the event's own transaction.

-- Signing secrets are sealed at rest under 'secret' data keys (DESIGN §7, crypto/webhook_secrets.py).
ALTER TABLE data_keys
    DROP CONSTRAINT data_keys_purpose_check,
    ADD CONSTRAINT data_keys_purpose_check CHECK (purpose IN ('pan', 'fingerprint', 'secret'));

CREATE TABLE webhook_endpoints (
    id               text PRIMARY KEY CHECK (id LIKE 'we\_%'),
    -- Same shape as tenant ids in the config; no ':' (the secret's AAD separator).
    tenant           text NOT NULL CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    url              text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    -- Event types (gateway/domain/event_types.py) or '*' for every type.
    enabled_events   text[] NOT NULL CHECK (cardinality(enabled_events) > 0),
    description      text,
    -- A deleted endpoint is kept (its deliveries reference it) but receives nothing.
    status           text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'deleted')),
    -- The signing secret, AES-256-GCM under data key secret_kid; AAD binds tenant and endpoint id.
    -- whsec_ + 43 chars + 16-byte tag: the length check keeps a clear secret out of the column.
    secret_kid       integer NOT NULL REFERENCES data_keys,
    secret_nonce     bytea NOT NULL CHECK (octet_length(secret_nonce) = 12),
    secret_sealed    bytea NOT NULL CHECK (octet_length(secret_sealed) BETWEEN 48 AND 200),
    -- After a rotation the previous secret also signs deliveries until previous_expires.
    previous_kid     integer REFERENCES data_keys,
    previous_nonce   bytea CHECK (octet_length(previous_nonce) = 12),
    previous_sealed  bytea CHECK (octet_length(previous_sealed) BETWEEN 48 AND 200),
    previous_expires timestamptz,
    CHECK ((previous_kid IS NULL) = (previous_sealed IS NULL)
           AND (previous_kid IS NULL) = (previous_nonce IS NULL)
           AND (previous_kid IS NULL) = (previous_expires IS NULL)),
    -- How long each delivery is retried ([webhooks] retry_window when the endpoint was created).
    retry_window     interval NOT NULL CHECK (retry_window > interval '0'),
    created          timestamptz NOT NULL DEFAULT now()
);
-- The list route (newest first) and the trigger below (the tenant's enabled endpoints).
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant, created DESC, id DESC)
    WHERE status = 'enabled';

-- One row per event and subscribed endpoint. A worker leases a due row (locked_until) and counts
-- the attempt in the statement that claims it, so two workers never make the same attempt.
CREATE TABLE webhook_deliveries (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id     text NOT NULL REFERENCES events (id),
    endpoint_id  text NOT NULL REFERENCES webhook_endpoints (id),
    tenant       text NOT NULL,
    -- canceled: the endpoint was deleted before the delivery succeeded or died.
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'delivered', 'dead', 'canceled')),
    attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    -- No attempt starts after the deadline: the delivery is dead (created or redelivered + window).
    deadline     timestamptz NOT NULL,
    last_status  integer,           -- the receiver's HTTP status, NULL when no answer came
    last_error   text,              -- why the last attempt failed (never a secret)
    delivered_at timestamptz,
    created      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id)
);
-- The claim walks pending rows oldest first; the lag gauge reads the oldest due one.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (created, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (endpoint_id) WHERE status = 'dead';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id) WHERE status = 'pending';

-- Fill the outbox in the event's transaction. On the payment path with no endpoint this is one
-- probe of webhook_endpoints_tenant that finds nothing.
CREATE OR REPLACE FUNCTION payhub_webhook_fanout() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (event_id, endpoint_id, tenant, deadline, created, next_attempt)
    SELECT NEW.id, w.id, NEW.tenant, now() + w.retry_window, NEW.created, now()
    FROM webhook_endpoints w
    WHERE w.tenant = NEW.tenant
      AND w.status = 'enabled'
      AND (NEW.type = ANY (w.enabled_events) OR '*' = ANY (w.enabled_events));
    RETURN NULL;
END
$$;

CREATE TRIGGER events_webhook_fanout AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION payhub_webhook_fanout();
