-- Payments core: idempotency keys, payments and their attempts, refunds, the double-entry
-- ledger with stored balances, and the event outbox.

-- Idempotency keys, claimed in PostgreSQL (Brandur Leach's atomic phases and recovery points).
-- A request owns a key while locked_until is in the future; a crashed request's lock expires
-- and a retry resumes from recovery_point with the same attempt ids, so nothing is charged twice.
CREATE TABLE idempotency_keys (
    tenant          text NOT NULL,
    key             text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_method  text NOT NULL,
    request_path    text NOT NULL,
    request_hash    bytea NOT NULL,
    recovery_point  text NOT NULL DEFAULT 'started',
    locked_until    timestamptz,
    object_id       text,
    response_status integer,
    response_body   bytea,
    created         timestamptz NOT NULL DEFAULT now(),
    finished        timestamptz,
    PRIMARY KEY (tenant, key),
    CHECK ((response_status IS NULL) = (response_body IS NULL))
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created);

CREATE TABLE payments (
    id                  text PRIMARY KEY CHECK (id LIKE 'pay\_%'),
    tenant              text NOT NULL,
    status              text NOT NULL CHECK (status IN ('new', 'requires_action', 'processing',
                            'requires_capture', 'under_review', 'succeeded', 'failed', 'canceled')),
    amount              bigint NOT NULL CHECK (amount > 0),
    currency            char(3) NOT NULL,
    amount_authorized   bigint NOT NULL DEFAULT 0,
    amount_captured     bigint NOT NULL DEFAULT 0,
    amount_refunded     bigint NOT NULL DEFAULT 0,
    method              text NOT NULL CHECK (method IN ('card', 'bank_transfer', 'wallet', 'balance', 'prepaid')),
    payment_method      jsonb NOT NULL,   -- display data only (brand, bin, last4, exp, token): never a PAN
    capture_method      text NOT NULL CHECK (capture_method IN ('automatic', 'manual')),
    customer_id         text,
    customer            jsonb,
    biller              text,
    bill                jsonb,
    bill_posting        jsonb,
    fx_quote            text,
    destination_account text,             -- a top-up: captured funds go to this stored balance
    description         text,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    connector           text,
    connector_reference text,
    risk                jsonb,
    next_action         jsonb,
    failure_code        text,
    failure_message     text,
    created             timestamptz NOT NULL DEFAULT now(),
    updated             timestamptz NOT NULL DEFAULT now(),
    -- Refunded ≤ captured ≤ authorized ≤ amount, whatever the code above does.
    CHECK (0 <= amount_refunded AND amount_refunded <= amount_captured
           AND amount_captured <= amount_authorized AND amount_authorized <= amount)
);
-- History: newest first per tenant, keyset pagination on (created, id); filtered variants.
CREATE INDEX payments_tenant_created ON payments (tenant, created DESC, id DESC);
CREATE INDEX payments_tenant_status ON payments (tenant, status, created DESC, id DESC);
CREATE INDEX payments_tenant_customer ON payments (tenant, customer_id, created DESC, id DESC)
    WHERE customer_id IS NOT NULL;
CREATE INDEX payments_tenant_biller ON payments (tenant, biller, created DESC, id DESC) WHERE biller IS NOT NULL;
-- The resolver scans only unresolved payments.
CREATE INDEX payments_processing ON payments (updated) WHERE status = 'processing';
CREATE TRIGGER payments_touch BEFORE UPDATE ON payments FOR EACH ROW EXECUTE FUNCTION payhub_touch_updated();

-- One row per call to a connector. The attempt id is the reference the connector de-duplicates
-- on: retries and status inquiries reuse it, so a payment is charged at most once.
CREATE TABLE payment_attempts (
    id                  text PRIMARY KEY CHECK (id LIKE 'att\_%'),
    payment_id          text NOT NULL REFERENCES payments (id),
    tenant              text NOT NULL,
    operation           text NOT NULL CHECK (operation IN ('authorize', 'capture', 'void', 'refund', 'post_bill')),
    connector           text NOT NULL,
    amount              bigint NOT NULL CHECK (amount >= 0),
    status              text NOT NULL CHECK (status IN ('started', 'succeeded', 'failed', 'pending', 'unknown')),
    connector_reference text,
    decline_code        text,
    raw_code            text,
    tries               integer NOT NULL DEFAULT 0,
    next_check          timestamptz,
    created             timestamptz NOT NULL DEFAULT now(),
    updated             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_attempts_payment ON payment_attempts (payment_id);
CREATE INDEX payment_attempts_due ON payment_attempts (next_check) WHERE status IN ('pending', 'unknown');
CREATE TRIGGER payment_attempts_touch BEFORE UPDATE ON payment_attempts
    FOR EACH ROW EXECUTE FUNCTION payhub_touch_updated();

CREATE TABLE refunds (
    id                  text PRIMARY KEY CHECK (id LIKE 're\_%'),
    tenant              text NOT NULL,
    payment_id          text NOT NULL REFERENCES payments (id),
    amount              bigint NOT NULL CHECK (amount > 0),
    currency            char(3) NOT NULL,
    status              text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    reason              text,
    connector_reference text,
    failure_code        text,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created             timestamptz NOT NULL DEFAULT now(),
    updated             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_payment ON refunds (payment_id);
CREATE INDEX refunds_tenant_created ON refunds (tenant, created DESC, id DESC);
CREATE TRIGGER refunds_touch BEFORE UPDATE ON refunds FOR EACH ROW EXECUTE FUNCTION payhub_touch_updated();

-- Ledger accounts. Customer balances (acct_…) may never go below zero; their balance lives on
-- the row and changes only through ledger_entries (trigger below), so a read is O(1) and the
-- balance always equals the sum of its entries.
-- System accounts (sys_<tenant>_<kind>_<reference>_<currency>: clearing, connector receivables,
-- biller payables, fees, FX) are contra accounts that may go negative. Every payment of a tenant
-- touches its clearing account, so keeping a running balance there would make that one row a
-- lock every payment queues on; their balance is the sum of their entries, read when reporting.
CREATE TABLE ledger_accounts (
    id            text PRIMARY KEY,
    tenant        text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('customer_balance', 'tenant_clearing', 'connector_receivable',
                      'biller_payable', 'fees', 'fx', 'prepaid_issuer')),
    currency      char(3) NOT NULL,
    customer_id   text,
    reference     text,              -- connector / biller name for system accounts
    available     bigint NOT NULL DEFAULT 0,
    pending       bigint NOT NULL DEFAULT 0,
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created       timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'customer_balance' OR (available >= 0 AND pending >= 0))
);
CREATE INDEX ledger_accounts_tenant ON ledger_accounts (tenant, created DESC, id DESC) WHERE kind = 'customer_balance';

CREATE TABLE ledger_transactions (
    id          text PRIMARY KEY CHECK (id LIKE 'ltx\_%'),
    tenant      text NOT NULL,
    kind        text NOT NULL,        -- payment_capture, refund, topup, bill_reversal, ...
    payment_id  text,
    refund_id   text,
    created     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_transactions_payment ON ledger_transactions (payment_id) WHERE payment_id IS NOT NULL;

CREATE TABLE ledger_entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  text NOT NULL REFERENCES ledger_transactions (id),
    account_id      text NOT NULL REFERENCES ledger_accounts (id),
    bucket          text NOT NULL DEFAULT 'available' CHECK (bucket IN ('available', 'pending')),
    amount          bigint NOT NULL CHECK (amount <> 0),
    currency        char(3) NOT NULL,
    created         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, id DESC);
CREATE INDEX ledger_entries_transaction ON ledger_entries (transaction_id);

-- Every entry moves its account's balance in the same transaction. The UPDATE takes the row
-- lock, so two concurrent spends of one balance serialize, and the CHECK on the account refuses
-- the one that would overdraw (the whole transaction rolls back).
CREATE FUNCTION ledger_apply_entry() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    account_currency char(3);
BEGIN
    IF NEW.account_id LIKE 'sys\_%' THEN
        RETURN NEW;  -- system accounts keep no running balance (see above)
    END IF;
    IF NEW.bucket = 'available' THEN
        UPDATE ledger_accounts SET available = available + NEW.amount WHERE id = NEW.account_id
            RETURNING currency INTO account_currency;
    ELSE
        UPDATE ledger_accounts SET pending = pending + NEW.amount WHERE id = NEW.account_id
            RETURNING currency INTO account_currency;
    END IF;
    IF account_currency IS DISTINCT FROM NEW.currency THEN
        RAISE EXCEPTION 'entry currency % does not match account % (%)', NEW.currency, NEW.account_id,
            account_currency USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ledger_entries_apply AFTER INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_apply_entry();

-- Sum of entries per transaction and currency is zero, checked at commit (deferred) so a
-- transaction's entries can be inserted one by one.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM ledger_entries WHERE transaction_id = NEW.transaction_id
        GROUP BY currency HAVING sum(amount) <> 0
    ) THEN
        RAISE EXCEPTION 'ledger transaction % is not balanced', NEW.transaction_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();

CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION payhub_forbid_change();
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION payhub_forbid_change();

-- Event log and webhook outbox: written in the same transaction as the change it describes.
CREATE TABLE events (
    id          text PRIMARY KEY CHECK (id LIKE 'evt\_%'),
    tenant      text NOT NULL,
    type        text NOT NULL,
    object_id   text NOT NULL,
    data        jsonb NOT NULL,
    created     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_tenant_created ON events (tenant, created DESC, id DESC);
CREATE INDEX events_object ON events (tenant, object_id);
