-- Foundation: shared helpers used by later tables.

-- Keeps an "updated" column true without every UPDATE statement having to remember it.
CREATE OR REPLACE FUNCTION payhub_touch_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated := now();
    RETURN NEW;
END
$$;

-- Rows in append-only tables (audit trail, ledger entries) must never change once written.
CREATE OR REPLACE FUNCTION payhub_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;
