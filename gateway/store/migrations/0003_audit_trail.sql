-- Tamper-evident audit trail.
--
-- Writers only INSERT into audit_events (one statement in their own transaction, no shared lock).
-- A single sealer later links committed events into audit_chain in the order it sees them and
-- signs a checkpoint per batch, like a transparency log. Sequence order is not commit order, so
-- the chain is ordered by its own position, and the sealer tracks a snapshot xmin watermark:
-- every event whose xid is below it had finished before the sealer looked.

CREATE TABLE audit_events (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at      timestamptz NOT NULL DEFAULT now(),
    tenant  text,
    actor   text NOT NULL,
    action  text NOT NULL,
    outcome text NOT NULL,
    source  text,
    object  text,
    details jsonb NOT NULL DEFAULT '{}'::jsonb
);
-- The sealer only looks at events at or above its last watermark.
CREATE INDEX audit_events_xid ON audit_events (xid);
CREATE INDEX audit_events_object ON audit_events (tenant, object) WHERE object IS NOT NULL;

CREATE TABLE audit_chain (
    position  bigint PRIMARY KEY CHECK (position > 0),
    seq       bigint NOT NULL UNIQUE REFERENCES audit_events (seq),
    prev_hash bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash      bytea NOT NULL CHECK (length(hash) = 32)
);

CREATE TABLE audit_checkpoints (
    position   bigint PRIMARY KEY REFERENCES audit_chain (position),
    chain_hash bytea NOT NULL CHECK (length(chain_hash) = 32),
    watermark  xid8 NOT NULL,
    key_id     text NOT NULL,
    signature  bytea NOT NULL,
    sealed     timestamptz NOT NULL DEFAULT now()
);

-- Append-only: no UPDATE, DELETE or TRUNCATE, whoever asks (short of disabling triggers as owner,
-- which `payhub audit verify` then detects through the hashes and signatures).
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION payhub_forbid_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION payhub_forbid_change();
CREATE TRIGGER audit_chain_append_only BEFORE UPDATE OR DELETE ON audit_chain
    FOR EACH ROW EXECUTE FUNCTION payhub_forbid_change();
CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain
    FOR EACH STATEMENT EXECUTE FUNCTION payhub_forbid_change();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION payhub_forbid_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION payhub_forbid_change();
