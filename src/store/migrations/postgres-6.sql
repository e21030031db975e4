-- Protected changes, staff and the audit log (issue 11, DESIGN.md §7).

-- Every sensitive request, of any kind, is one change record: a key's
-- replacement or removal (by address), a destination added, removed or
-- changed, security lowered (by account).
CREATE TABLE IF NOT EXISTS changes (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    account          TEXT,
    address          TEXT,
    state            TEXT NOT NULL,
    proof            TEXT,
    requested_at     BIGINT NOT NULL,
    requested_by     TEXT NOT NULL,
    not_before       BIGINT NOT NULL,
    approvals        TEXT NOT NULL DEFAULT '[]',
    approvals_needed BIGINT NOT NULL DEFAULT 0,
    reason           TEXT,
    subject          TEXT NOT NULL DEFAULT '{}',
    proven_current   BOOLEAN NOT NULL DEFAULT FALSE,
    proven_new       BOOLEAN NOT NULL DEFAULT FALSE,
    decided_at       BIGINT,
    -- A code sent to a verified destination to prove the change (JSON:
    -- where it went, its hash and the counts that bound guessing).
    proof_code       TEXT
);
INSERT INTO changes (id, kind, address, state, requested_at, requested_by, not_before, subject,
                     proven_current, proven_new)
SELECT id, CASE kind WHEN 'replace' THEN 'key.replace' ELSE 'key.remove' END, address, state,
       requested_at, 'unknown', not_before,
       CASE WHEN fingerprint IS NULL THEN '{}' ELSE json_build_object('fingerprint', fingerprint)::text END,
       proven_current, proven_new
  FROM key_changes;
DROP TABLE IF EXISTS key_changes;
CREATE INDEX IF NOT EXISTS changes_address ON changes(address, state);
CREATE INDEX IF NOT EXISTS changes_account ON changes(account, state);
CREATE INDEX IF NOT EXISTS changes_due ON changes(state, not_before);

-- Veto links, one per notice that carried one: only the hash of the
-- secret, minted when the notice goes out.
CREATE TABLE IF NOT EXISTS change_links (
    hash        TEXT PRIMARY KEY,
    change      TEXT NOT NULL,
    destination TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX IF NOT EXISTS change_links_change ON change_links(change);

-- What a veto (or a refused approval) opened, for staff to look into.
CREATE TABLE IF NOT EXISTS incidents (
    id        TEXT PRIMARY KEY,
    account   TEXT,
    change    TEXT,
    kind      TEXT NOT NULL,
    opened_at BIGINT NOT NULL,
    state     TEXT NOT NULL,
    note      TEXT,
    closed_at BIGINT,
    closed_by TEXT
);
CREATE INDEX IF NOT EXISTS incidents_state ON incidents(state, opened_at);

-- Staff as principals: tokens act as one of them.
CREATE TABLE IF NOT EXISTS staff (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    disabled_at BIGINT
);
ALTER TABLE tokens ADD COLUMN IF NOT EXISTS staff TEXT;

-- The audit log: append-only, each entry carrying the hash of the one
-- before (model::audit), checkpoints signed with the operator's key.
CREATE TABLE IF NOT EXISTS audit (
    seq       BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    account   TEXT,
    address   TEXT,
    change    TEXT,
    ticket    TEXT,
    source    TEXT,
    outcome   TEXT NOT NULL,
    detail    TEXT,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_account ON audit(account, seq);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    head      TEXT NOT NULL,
    at        BIGINT NOT NULL,
    signature TEXT NOT NULL
);

-- A change's reminders, found by its key when it ends.
CREATE INDEX IF NOT EXISTS notifications_reminders ON notifications(key) WHERE type = 'kci.change.pending';
