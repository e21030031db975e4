-- Events are looked up by account and key only to plan a later event:
-- pairing, superseding and flap counting (`Planner::related_types`).
-- `keyed` says whether an event's type is looked up so; only such events
-- have an entry in `events_key`. Its entries are placed by account and
-- key, a random leaf of the index for each insert, so a type nothing
-- pairs with, supersedes or counts no longer pays it. Events stored
-- before are kept in it (`DEFAULT true`). The index is built again,
-- under a lock of the table for the time that takes.
ALTER TABLE events ADD COLUMN IF NOT EXISTS keyed BOOLEAN NOT NULL DEFAULT true;
DROP INDEX IF EXISTS events_key;
CREATE INDEX IF NOT EXISTS events_key ON events(account, key, type, received_at) WHERE keyed;
