-- Token life cycle (issue 16): expiry, revocation, and when and from where
-- each token was last used (recorded at most once a minute).
ALTER TABLE tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE tokens ADD COLUMN revoked_at BIGINT;
ALTER TABLE tokens ADD COLUMN last_used_at BIGINT;
ALTER TABLE tokens ADD COLUMN last_used_from TEXT;
