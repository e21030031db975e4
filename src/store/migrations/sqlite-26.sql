-- Events are looked up by account and key only to plan a later event:
-- pairing, superseding and flap counting (`Planner::related_types`).
-- `keyed` says whether an event's type is looked up so; only such events
-- have an entry in `events_key`. Its entries are placed by account and
-- key, a random leaf of the index for each insert (a page of the log
-- each), so a type nothing pairs with, supersedes or counts no longer
-- pays it. Events stored before are kept in it (`DEFAULT 1`).
ALTER TABLE events ADD COLUMN keyed INTEGER NOT NULL DEFAULT 1;
DROP INDEX IF EXISTS events_key;
CREATE INDEX IF NOT EXISTS events_key ON events(account, key, type, received_at) WHERE keyed = 1;
