-- Keyring and card vault (DESIGN §7). No column ever holds a clear PAN, a CVV or an unwrapped key.

-- Data-encryption keys, each stored only wrapped by the key-encryption key (which lives outside the
-- database: a 0600 file, PAYHUB_KEK, or later a KMS/HSM).
CREATE TABLE data_keys (
    -- One kid sequence for both purposes, assigned as max+1 under the keyring advisory lock (so
    -- versions are dense and ordered; the highest kid of a purpose is its current key).
    kid     integer PRIMARY KEY CHECK (kid > 0),
    -- 'pan' keys encrypt PANs (rotated routinely); the 'fingerprint' key is the HMAC key for PAN
    -- fingerprints (rotated only on purpose: a new key changes every fingerprint).
    purpose text NOT NULL CHECK (purpose IN ('pan', 'fingerprint')),
    -- Which KEK wrapped this row, so a wrong KEK is reported as such rather than as corruption.
    kek_id  text NOT NULL,
    -- KEK output; its associated data binds kid and purpose, so a wrapped key moved to another row
    -- does not unwrap.
    wrapped bytea NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);

-- Deleting a data key would make every PAN sealed under it unreadable forever: old versions are
-- kept (rotation re-wraps them, never removes them). Card tokens also reference their keys.
CREATE OR REPLACE FUNCTION payhub_forbid_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rows of table % are never deleted', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER data_keys_keep BEFORE DELETE ON data_keys
    FOR EACH ROW EXECUTE FUNCTION payhub_forbid_delete();

-- Vaulted cards: the PAN only as AES-256-GCM ciphertext, plus display data and a keyed fingerprint.
CREATE TABLE card_tokens (
    -- Random "tok_" + 24 alphanumerics; the id is part of the ciphertext's associated data.
    id              text PRIMARY KEY CHECK (id LIKE 'tok\_%'),
    -- Same shape as tenant ids in the config; in particular no ':' (the AAD separator).
    tenant          text NOT NULL CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    -- HMAC-SHA256 of the PAN under data key fingerprint_kid: lookups without decrypting anything.
    fingerprint     bytea NOT NULL CHECK (octet_length(fingerprint) = 32),
    fingerprint_kid integer NOT NULL REFERENCES data_keys,
    -- PAN ciphertext under data key kid: 96-bit nonce; 12..19 digits + 16-byte tag. The length check
    -- keeps anything that is not a sealed PAN (e.g. a clear one by mistake) out of the column.
    kid             integer NOT NULL REFERENCES data_keys,
    nonce           bytea NOT NULL CHECK (octet_length(nonce) = 12),
    ciphertext      bytea NOT NULL CHECK (octet_length(ciphertext) BETWEEN 28 AND 35),
    -- Display data allowed in clear (PCI DSS): brand, first six, last four, expiry. Never CVV.
    brand           text NOT NULL,
    bin             text NOT NULL CHECK (bin ~ '^[0-9]{6}$'),
    last4           text NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    exp_month       smallint NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year        smallint NOT NULL CHECK (exp_year BETWEEN 2000 AND 2200),
    created         timestamptz NOT NULL DEFAULT now(),
    -- De-duplication: the same card (and expiry) put on file twice by one tenant is one token.
    -- INSERT ... ON CONFLICT on this key makes concurrent vaulting of one card race-free.
    -- Scoped by tenant: tenants never share tokens.
    CONSTRAINT card_tokens_dedup UNIQUE (tenant, fingerprint, exp_month, exp_year)
);

-- Velocity and fraud checks look a card up across tenants by fingerprint alone (the unique index
-- above starts with tenant, so it cannot serve that).
CREATE INDEX card_tokens_fingerprint ON card_tokens (fingerprint);
