-- A channel's provider limits, shared by every node on the store: the
-- rate limiter's theoretical arrival time (GCRA, ms since the epoch) and
-- until when the provider asked everyone to wait (ms). One row a channel,
-- locked while a node reserves slots, so that any number of nodes
-- together send no more than the provider's rate.
CREATE TABLE IF NOT EXISTS channel_limits (
    channel TEXT PRIMARY KEY,
    tat INTEGER,
    paused_until INTEGER
);
