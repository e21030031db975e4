-- The digests not yet sent, by account. A notice folded into a digest is
-- still waiting while its digest is (rows' `waiting`); pairing finds the
-- folded notices of its key through the digests open for the account,
-- and a cancellation asks of each folded notice whether its own digest is
-- still pending. Before, both asked whether the digest was among every
-- pending notice (`digest IN (SELECT id ... WHERE state = 'pending')`):
-- a list of the whole backlog built for each pairing event and for each
-- cancellation that met a folded notice, 50 ms at 200,000 notices held
-- for later (BENCHMARKS.md, stop 38). Only open digests are in this
-- index: a notice's insert does not touch it.
CREATE INDEX IF NOT EXISTS notifications_open_digests
    ON notifications(account) WHERE state = 'pending' AND type = 'kci.digest';
