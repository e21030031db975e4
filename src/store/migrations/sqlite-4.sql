-- The key registry (DESIGN.md §6): OpenPGP keys per target address. One
-- active key per address; submitted ones wait, pending, for the holder to
-- follow the link sent encrypted to them.
CREATE TABLE IF NOT EXISTS keys (
    address      TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    armored      TEXT NOT NULL,
    state        TEXT NOT NULL,
    source       TEXT NOT NULL,
    submitted_at INTEGER NOT NULL,
    activated_at INTEGER,
    expires_at   INTEGER,
    PRIMARY KEY (address, fingerprint)
);
CREATE UNIQUE INDEX IF NOT EXISTS keys_active ON keys(address) WHERE state = 'active';

-- Single-use links: only their SHA-256 is kept.
CREATE TABLE IF NOT EXISTS key_tokens (
    hash        TEXT PRIMARY KEY,
    address     TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    change      TEXT,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);

-- Protected changes (DESIGN.md §7) to an address's active key.
CREATE TABLE IF NOT EXISTS key_changes (
    id             TEXT PRIMARY KEY,
    address        TEXT NOT NULL,
    kind           TEXT NOT NULL,
    fingerprint    TEXT,
    state          TEXT NOT NULL,
    requested_at   INTEGER NOT NULL,
    not_before     INTEGER NOT NULL,
    proven_current INTEGER NOT NULL DEFAULT 0,
    proven_new     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS key_changes_address ON key_changes(address, state);

-- Who uses an address: told when its key changes.
CREATE INDEX IF NOT EXISTS destinations_uri ON destinations(uri);

-- When each address was last sent a refusal: at most one an hour, so a
-- forged sender cannot turn kci into a mail cannon against a third party.
CREATE TABLE IF NOT EXISTS key_refusals (
    address TEXT PRIMARY KEY,
    last_at INTEGER NOT NULL
);
