-- The digests not yet sent, by account and destination: see sqlite-23.sql. On
-- PostgreSQL, pairing's search read the whole notifications table before
-- (a sequential scan: the `OR` of a pending notice and a folded one
-- matched no index), once for every pairing event.
CREATE INDEX IF NOT EXISTS notifications_open_digests
    ON notifications(account, destination, due_at) WHERE state = 'pending' AND type = 'kci.digest';
-- A claim's turn check (rows::sql::in_turn_split) asks two questions of
-- each candidate, each answered inside one of these indexes: is an
-- earlier notice of the same account, key and URI due, and is one being
-- sent or waiting to be tried again (`notifications_busy` holds only
-- those). Through `notifications_key (account, key, type)` it read the
-- table row of every notice the key held for later before it met the one
-- in its way: 5,000 held and 1,000 due for one key made each claim ~1 s
-- (BENCHMARKS.md, stop 38). `notifications_turn` replaces that index:
-- with both, the planner took the narrower one for the turn check;
-- pairing's search by (account, key, type) reads the type in it.
DROP INDEX IF EXISTS notifications_key;
CREATE INDEX IF NOT EXISTS notifications_turn
    ON notifications(account, key, uri, due_at, id, type) WHERE state IN ('pending', 'sending');
CREATE INDEX IF NOT EXISTS notifications_busy
    ON notifications(account, key, uri, id)
    WHERE state IN ('pending', 'sending')
      AND (state = 'sending' OR reason IN ('retry', 'rate_limit', 'requeued', 'redriven'));
