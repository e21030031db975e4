-- The digests not yet sent, by account: see sqlite-23.sql. On
-- PostgreSQL, pairing's search read the whole notifications table before
-- (a sequential scan: the `OR` of a pending notice and a folded one
-- matched no index), once for every pairing event.
CREATE INDEX IF NOT EXISTS notifications_open_digests
    ON notifications(account) WHERE state = 'pending' AND type = 'kci.digest';
-- A claim's turn check (rows::sql::in_turn_split) asks two questions of
-- each candidate, each answered inside one of these indexes: is an
-- earlier notice of the same account, key and URI due (or being sent:
-- its due time passed when it was claimed), and is one being sent or
-- waiting to be tried again. Through `notifications_key (account, key,
-- type)` it read the table row of every notice the key held for later
-- before meeting the one in its way: 5,000 held and 1,000 due for one key
-- made each claim ~1 s (BENCHMARKS.md, stop 38). `notifications_busy`
-- holds only notices in flight or waiting for a retry.
CREATE INDEX IF NOT EXISTS notifications_turn
    ON notifications(account, key, uri, due_at, id) WHERE state IN ('pending', 'sending');
CREATE INDEX IF NOT EXISTS notifications_busy
    ON notifications(account, key, uri, id)
    WHERE state IN ('pending', 'sending')
      AND (state = 'sending' OR reason IN ('retry', 'rate_limit', 'requeued', 'redriven'));
