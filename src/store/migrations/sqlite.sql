-- kci schema, SQLite. Instants are milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    scopes      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS accounts (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    timezone       TEXT,
    security_level TEXT NOT NULL,
    paranoid       INTEGER NOT NULL,
    defaults       TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS contacts (
    account  TEXT NOT NULL REFERENCES accounts(id),
    id       TEXT NOT NULL,
    name     TEXT NOT NULL,
    timezone TEXT,
    PRIMARY KEY (account, id)
);

CREATE TABLE IF NOT EXISTS destinations (
    id              TEXT PRIMARY KEY,
    account         TEXT NOT NULL,
    contact         TEXT NOT NULL,
    uri             TEXT NOT NULL,
    prefs           TEXT NOT NULL,
    verified        INTEGER NOT NULL,
    code_hash       TEXT,
    code_expires_at INTEGER,
    code_attempts   INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (account, contact) REFERENCES contacts(account, id)
);
CREATE INDEX IF NOT EXISTS destinations_contact ON destinations(account, contact);

CREATE TABLE IF NOT EXISTS events (
    id            TEXT PRIMARY KEY,
    account       TEXT NOT NULL,
    type          TEXT NOT NULL,
    key           TEXT NOT NULL,
    received_at   INTEGER NOT NULL,
    notifications INTEGER NOT NULL,
    payload       TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS notifications (
    id          TEXT PRIMARY KEY,
    event       TEXT,
    account     TEXT NOT NULL,
    contact     TEXT NOT NULL,
    destination TEXT NOT NULL,
    uri         TEXT NOT NULL,
    channel     TEXT NOT NULL,
    type        TEXT NOT NULL,
    key         TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT,
    detail      TEXT,
    due_at      INTEGER NOT NULL,
    expires_at  INTEGER,
    decided_at  INTEGER NOT NULL,
    sent_at     INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0,
    lease_until INTEGER,
    timezone    TEXT NOT NULL,
    message     TEXT
);
CREATE INDEX IF NOT EXISTS notifications_event ON notifications(event);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications(due_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS notifications_lease ON notifications(lease_until) WHERE state = 'sending';
CREATE INDEX IF NOT EXISTS notifications_key ON notifications(account, key, type) WHERE state = 'pending';
