-- A claim takes each key's notices to a destination in turn
-- (rows::sql::in_turn): for each candidate it asks whether an earlier one
-- of the same account, key and URI is being sent, is due, or waits to be
-- tried again. Through the index on (account, key, type) alone, that
-- question read the table row of every notice the key held for later
-- (quiet hours, `not_before`) before it met the due one in its way: a key
-- holding 5,000 for later and 1,000 due made one claim 1.3 s of the
-- writer's time, and the load bench's delivery fell as its backlog grew
-- (BENCHMARKS.md, stop 37). With the state, due time and reason after the
-- columns it is searched by, the index puts a key's due notices before
-- its held ones and passes over the held ones without reading their rows;
-- it still serves pairing's search by (account, key, type). No index is
-- added: a notice's insert updates as many as before, each entry a few
-- bytes wider (batch ingest cost ~12% more CPU in the same bench).
DROP INDEX IF EXISTS notifications_key;
CREATE INDEX IF NOT EXISTS notifications_key
    ON notifications(account, key, type, state, due_at, reason)
    WHERE state IN ('pending', 'sending');
