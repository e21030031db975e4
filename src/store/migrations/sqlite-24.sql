-- A claim's turn check (rows::sql::in_turn) asked as two questions, each
-- answered inside an index of its own, as on PostgreSQL since migration
-- 23: is an earlier notice of the key due (`notifications_turn`, searched
-- by account, key, state and due time), and is one being sent or waiting
-- to be tried again (`notifications_busy`, which holds only those).
-- Through migration 22's (account, key, type, state, due_at, reason) the
-- check, searched by account and key alone, walked every index entry the
-- key held for later (quiet hours, `not_before`) for each due candidate:
-- 2.5 ms of the one writer for a claim of 64 with 160 held a key, 0.9 ms
-- now (BENCHMARKS.md, stop 39). The new index is no wider (the reason
-- left it: a held notice is not due, a retried one is in the second
-- index), so a notice's insert costs what it did; `notifications_busy`
-- takes no entry for a new notice. Pairing's search by (account, key,
-- type) reads the key's pending entries in this index, the type among
-- them, without reading their rows.
DROP INDEX IF EXISTS notifications_key;
CREATE INDEX IF NOT EXISTS notifications_turn
    ON notifications(account, key, state, due_at, type)
    WHERE state IN ('pending', 'sending');
CREATE INDEX IF NOT EXISTS notifications_busy
    ON notifications(account, key, uri, id)
    WHERE state IN ('pending', 'sending')
      AND (state = 'sending' OR reason IN ('retry', 'rate_limit', 'requeued', 'redriven'));
