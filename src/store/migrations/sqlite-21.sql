-- An account's destinations are read in (contact, id) order each time its
-- directory is (every event planned reads it): an index in that order
-- gives them without a sort. It covers every look-up by (account) or
-- (account, contact) the index it replaces served.
CREATE INDEX IF NOT EXISTS destinations_listed ON destinations(account, contact, id);
DROP INDEX IF EXISTS destinations_contact;
