-- Daily reconciliation of the hub's records against each biller's settlement file.

CREATE TABLE recon_runs (
    id             text PRIMARY KEY CHECK (id LIKE 'recon\_%'),
    connector      text NOT NULL,
    biller         text NOT NULL,
    day            date NOT NULL,
    matched        integer NOT NULL,
    mismatched     integer NOT NULL,   -- amount or status differs
    missing_at_hub integer NOT NULL,   -- in the biller's file only (长款 at the biller)
    missing_at_biller integer NOT NULL, -- posted at the hub, absent from the file (短款)
    biller_count   integer NOT NULL,   -- the file's own `count|total` header, as declared
    biller_total   bigint NOT NULL,
    created        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recon_runs_day ON recon_runs (day DESC, biller);

CREATE TABLE recon_items (
    run_id         text NOT NULL REFERENCES recon_runs (id),
    kind           text NOT NULL CHECK (kind IN ('amount_mismatch', 'status_mismatch', 'missing_at_hub',
                                                  'missing_at_biller')),
    serial         text NOT NULL,      -- our reference at the biller (the posting attempt id)
    payment_id     text,
    hub_amount     bigint,
    biller_amount  bigint,
    hub_status     text,
    biller_status  text
);
CREATE INDEX recon_items_run ON recon_items (run_id);
