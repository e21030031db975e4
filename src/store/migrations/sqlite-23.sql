-- The digests not yet sent, by account and destination. A notice folded
-- into a digest is still waiting while its digest is (rows' `waiting`);
-- pairing finds the folded notices of its key through the digests open
-- for the account, a cancellation asks of each folded notice whether its
-- own digest is still pending, and an event planned for a destination
-- that takes digests finds the one open there. Before, the first two
-- asked whether the digest was among every pending notice (`digest IN
-- (SELECT id ... WHERE state = 'pending')`): a list of the whole backlog,
-- built for each pairing event and each cancellation that met a folded
-- notice, ~100 ms at 200,000 notices held for later; the third walked the
-- destination's whole history in due order, 2.3 ms at 20,000 notices
-- (BENCHMARKS.md, stop 38). Only open digests are in this index: a
-- notice's insert does not touch it.
CREATE INDEX IF NOT EXISTS notifications_open_digests
    ON notifications(account, destination, due_at) WHERE state = 'pending' AND type = 'kci.digest';
