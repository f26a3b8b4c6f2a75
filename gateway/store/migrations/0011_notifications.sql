-- Notifications (issue #12): customer preferences, bill due-date reminders, low-balance alerts,
-- and the outbox of messages (SMS, e-mail) to people. Reminders and alerts are events first
-- (so webhooks carry them); a message is queued in the same transaction as its event.

-- One row per customer who saved preferences; a customer without a row has the defaults
-- (gateway/domain/notifications.py). Values are validated by the API; the checks repeat the
-- rules that would make a row unusable.
CREATE TABLE customer_preferences (
    tenant             text NOT NULL,
    customer_id        text NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 64),
    locale             text NOT NULL,
    timezone           text NOT NULL,
    default_currency   char(3),
    channels           text[] NOT NULL DEFAULT '{}' CHECK (channels <@ ARRAY['email', 'sms', 'push']),
    email              text,
    phone              text,
    quiet_start        time,
    quiet_end          time,
    reminder_lead_days integer NOT NULL CHECK (reminder_lead_days BETWEEN 0 AND 60),
    theme              text NOT NULL CHECK (theme IN ('light', 'dark', 'system')),
    font_scale         double precision NOT NULL CHECK (font_scale BETWEEN 0.75 AND 2.0),
    updated            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, customer_id),
    CHECK ((quiet_start IS NULL) = (quiet_end IS NULL)),
    CHECK (phone IS NOT NULL OR NOT 'sms' = ANY (channels)),
    CHECK (email IS NOT NULL OR NOT 'email' = ANY (channels))
);

-- Ledger accounts with a low-balance alert carry its threshold (minor units of the account's
-- currency); set and cleared by the reminders API.
ALTER TABLE ledger_accounts ADD COLUMN low_balance_threshold bigint CHECK (low_balance_threshold > 0);

CREATE TABLE reminders (
    id              text PRIMARY KEY CHECK (id LIKE 'rem\_%'),
    tenant          text NOT NULL,
    customer_id     text,
    type            text NOT NULL CHECK (type IN ('bill_due', 'low_balance')),
    -- bill_due
    biller          text,
    customer_params jsonb,
    lead_days       integer CHECK (lead_days BETWEEN 0 AND 60),   -- NULL: the customer's preference
    next_run        timestamptz,
    -- low_balance
    account_id      text REFERENCES ledger_accounts (id),
    threshold       bigint CHECK (threshold > 0),
    currency        char(3),                                      -- the account's, for display
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deleted')),
    created         timestamptz NOT NULL DEFAULT now(),
    deleted         timestamptz,
    CHECK (type <> 'bill_due'
           OR (customer_id IS NOT NULL AND biller IS NOT NULL AND customer_params IS NOT NULL
               AND next_run IS NOT NULL)),
    CHECK (type <> 'low_balance' OR (account_id IS NOT NULL AND threshold IS NOT NULL))
);
CREATE INDEX reminders_tenant_created ON reminders (tenant, created DESC, id DESC) WHERE status = 'active';
CREATE INDEX reminders_tenant_customer ON reminders (tenant, customer_id, created DESC, id DESC)
    WHERE status = 'active';
-- The scheduler claims due bill reminders, oldest due first (FOR UPDATE SKIP LOCKED).
CREATE INDEX reminders_due ON reminders (next_run) WHERE status = 'active' AND type = 'bill_due';
-- One low-balance alert per account.
CREATE UNIQUE INDEX reminders_one_low_balance ON reminders (account_id)
    WHERE type = 'low_balance' AND status = 'active';

-- A bill is noticed once per reminder, whatever the number of schedulers: the scheduler inserts
-- this row and the bill.due_soon event in one transaction, and a second insert finds the row.
CREATE TABLE reminder_notices (
    reminder_id text NOT NULL REFERENCES reminders (id),
    bill_ref    text NOT NULL,
    due_date    date NOT NULL,
    event_id    text NOT NULL,
    created     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (reminder_id, bill_ref, due_date)
);

-- Messages to people, queued with their event. The body is rendered from the event when the
-- message is sent (the low-balance trigger below queues messages from SQL). Claimed with
-- FOR UPDATE SKIP LOCKED under a lease (not_before moves forward while a sender holds it); a
-- customer's quiet hours move not_before to their end; a failed send is retried with back-off.
CREATE TABLE notification_messages (
    id          text PRIMARY KEY CHECK (id LIKE 'msg\_%'),
    tenant      text NOT NULL,
    customer_id text NOT NULL,
    event_id    text NOT NULL,
    channel     text NOT NULL CHECK (channel IN ('sms', 'email')),
    recipient   text NOT NULL,          -- "to": the phone (E.164) or e-mail address
    body        text,                   -- as sent
    not_before  timestamptz NOT NULL DEFAULT now(),
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'dead')),
    attempts    integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error  text,
    created     timestamptz NOT NULL DEFAULT now(),
    sent        timestamptz
);
CREATE INDEX notification_messages_due ON notification_messages (not_before) WHERE status = 'pending';
CREATE INDEX notification_messages_event ON notification_messages (event_id);

-- Queue one message per channel (sms, e-mail) the customer chose, for an event just inserted.
CREATE FUNCTION notification_queue_messages(p_tenant text, p_customer text, p_event text)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO notification_messages (id, tenant, customer_id, event_id, channel, recipient)
    SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), p.tenant, p.customer_id, p_event, c.channel,
           CASE c.channel WHEN 'sms' THEN p.phone ELSE p.email END
    FROM customer_preferences p CROSS JOIN LATERAL unnest(p.channels) AS c(channel)
    WHERE p.tenant = p_tenant AND p.customer_id = p_customer AND c.channel IN ('sms', 'email')
$$;

-- account.low_balance: a customer balance crossed from at or above its threshold to below it.
-- Balances move only through ledger_entries (ledger_apply_entry), so the alert is raised in the
-- transaction that moved the money, on every path. The WHEN clause keeps the cost of an update
-- that crosses nothing at a comparison; only a crossing runs the function.
CREATE FUNCTION notification_low_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event_id    text := 'evt_' || replace(gen_random_uuid()::text, '-', '');
    reminder_id text;
    customer    text;
BEGIN
    SELECT r.id, r.customer_id INTO reminder_id, customer FROM reminders r
        WHERE r.account_id = NEW.id AND r.type = 'low_balance' AND r.status = 'active';
    customer := coalesce(customer, NEW.customer_id);
    -- data: the account as GET /v1/accounts/{id} renders it, plus the threshold and the reminder.
    INSERT INTO events (id, tenant, type, object_id, data) VALUES (
        event_id, NEW.tenant, 'account.low_balance', NEW.id,
        jsonb_build_object(
            'id', NEW.id,
            'object', 'account',
            'currency', NEW.currency,
            'customer', NEW.customer_id,
            'balance', jsonb_build_object('available', NEW.available, 'pending', NEW.pending),
            'metadata', NEW.metadata,
            'created', to_char(NEW.created AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
            'low_balance_threshold', NEW.low_balance_threshold,
            'reminder', reminder_id
        ));
    IF customer IS NOT NULL THEN
        PERFORM notification_queue_messages(NEW.tenant, customer, event_id);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER ledger_accounts_low_balance AFTER UPDATE OF available ON ledger_accounts
    FOR EACH ROW
    WHEN (NEW.low_balance_threshold IS NOT NULL
          AND OLD.available >= NEW.low_balance_threshold
          AND NEW.available < NEW.low_balance_threshold)
    EXECUTE FUNCTION notification_low_balance();
