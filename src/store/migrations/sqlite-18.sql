-- A claim takes each key's notices to a destination in turn
-- (rows::sql::in_turn): for each candidate it asks whether an earlier one
-- of the same account, key and URI is pending or being sent. It asks
-- through the pairing index, which now holds the notices being sent as
-- well as the pending ones: a separate index on (uri, key, id) halved the
-- rate of notification inserts (BENCHMARKS.md, stop 23); this one costs
-- none.
DROP INDEX IF EXISTS notifications_key;
CREATE INDEX IF NOT EXISTS notifications_key
    ON notifications(account, key, type) WHERE state IN ('pending', 'sending');
