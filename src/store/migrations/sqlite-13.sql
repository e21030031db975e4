-- Times a provider asked to wait for a notice (HTTP 429, Retry-After):
-- pacing, not failure, so it does not spend an attempt; bounded by
-- [delivery] max_paced.
ALTER TABLE notifications ADD COLUMN paced INTEGER NOT NULL DEFAULT 0;
