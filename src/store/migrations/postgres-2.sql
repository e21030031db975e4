-- Pairing looks up the latest event of a type for a key.
CREATE INDEX IF NOT EXISTS events_key ON events(account, key, type, received_at);

-- Every decision about a notification, in order: the record behind
-- GET /v1/events/{id} and `kci explain`.
CREATE TABLE IF NOT EXISTS decisions (
    seq          BIGSERIAL PRIMARY KEY,
    notification TEXT NOT NULL,
    event        TEXT,
    at           BIGINT NOT NULL,
    state        TEXT NOT NULL,
    reason       TEXT,
    detail       TEXT,
    due_at       BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_event ON decisions(event, at, seq);

-- Caps and digests: a digested notice points at its digest; planning counts
-- a destination's recent notices.
ALTER TABLE notifications ADD COLUMN digest TEXT;
CREATE INDEX IF NOT EXISTS notifications_digest ON notifications(digest) WHERE digest IS NOT NULL;
CREATE INDEX IF NOT EXISTS notifications_destination ON notifications(destination, due_at);

-- Contacts carry preferences for all their destinations.
ALTER TABLE contacts ADD COLUMN prefs TEXT NOT NULL DEFAULT '{}';

-- With on_pair = "summary": when the paired partner happened.
ALTER TABLE notifications ADD COLUMN paired_from BIGINT;

-- The dead-letter list: failed deliveries, newest first.
CREATE INDEX IF NOT EXISTS notifications_failed ON notifications(decided_at) WHERE state = 'failed';
