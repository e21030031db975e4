-- Credentials a channel must keep across restarts and share between nodes
-- (X's refresh token, which X replaces on every use): sealed with a key
-- derived from the code key (src/trust/seal.rs), never in clear. `version`
-- moves by one on every swap, which succeeds only from the version read
-- (compare-and-swap: of two nodes refreshing at once, the loser reads
-- again). `seed` is an HMAC of the configured value the chain grew from.
CREATE TABLE IF NOT EXISTS credentials (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    sealed TEXT NOT NULL,
    seed TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
