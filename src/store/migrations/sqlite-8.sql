-- Assurance recovery (DESIGN.md §7): the A-word as an argon2 hash, the
-- confirmation link's and the T-word's secrets as hashes.
CREATE TABLE IF NOT EXISTS assurances (
    id              TEXT PRIMARY KEY,
    change          TEXT NOT NULL,
    account         TEXT,
    address         TEXT NOT NULL,
    assurer         TEXT NOT NULL,
    ticket          TEXT NOT NULL,
    met_on          INTEGER NOT NULL,
    recorded_at     INTEGER NOT NULL,
    state           TEXT NOT NULL,
    a_hash          TEXT NOT NULL,
    link_hash       TEXT NOT NULL UNIQUE,
    link_expires_at INTEGER NOT NULL,
    t_hash          TEXT,
    t_expires_at    INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS assurances_change ON assurances(change);
