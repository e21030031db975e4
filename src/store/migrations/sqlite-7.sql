-- Call verification (DESIGN.md §8): each side's code and the customer's
-- link kept only as hashes.
CREATE TABLE IF NOT EXISTS calls (
    id                 TEXT PRIMARY KEY,
    account            TEXT NOT NULL,
    contact            TEXT NOT NULL,
    staff              TEXT NOT NULL,
    state              TEXT NOT NULL,
    opened_at          INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    staff_code_hash    TEXT NOT NULL,
    customer_code_hash TEXT NOT NULL,
    link_hash          TEXT NOT NULL UNIQUE,
    staff_confirmed    INTEGER NOT NULL DEFAULT 0,
    customer_confirmed INTEGER NOT NULL DEFAULT 0,
    attempts           INTEGER NOT NULL DEFAULT 0,
    reason             TEXT
);
CREATE INDEX IF NOT EXISTS calls_contact ON calls(account, contact, state);
CREATE INDEX IF NOT EXISTS calls_open ON calls(state, expires_at);
