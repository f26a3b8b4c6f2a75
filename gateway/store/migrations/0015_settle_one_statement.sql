-- Issue #13: phase 3 of a payment (apply the answer, book, event, audit, stored response) is one
-- statement whose response is rendered before it runs, so that statement sets the payment's
-- `updated` itself (the value the response shows). Every other UPDATE leaves the column alone and
-- the trigger keeps it true, as before.
CREATE OR REPLACE FUNCTION payhub_touch_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.updated IS NOT DISTINCT FROM OLD.updated THEN
        NEW.updated := now();
    END IF;
    RETURN NEW;
END
$$;

-- The settlement statement renders against a known row version; a payment changed since (another
-- update committed in between) must not get a half-applied settlement. This raises a serialization
-- failure (SQLSTATE 40001) so the statement writes nothing and the hub reads the row again.
CREATE OR REPLACE FUNCTION payhub_unchanged(unchanged boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT unchanged THEN
        RAISE EXCEPTION 'payment changed since it was read' USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN true;
END
$$;
