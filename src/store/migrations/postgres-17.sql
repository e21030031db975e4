-- What a node may cache of bearer tokens (web::auth::TokenCache) stays
-- true while `auth_epoch.n` stays the same: every change to what a token
-- lookup answers (a token revoked, rotated, re-scoped, re-bound, deleted;
-- a staff member disabled, re-roled, deleted) moves it by one, in the
-- changing transaction, whichever process or node made the change. Only
-- a token's last use (`last_used_at`, `last_used_from`) leaves it: a new
-- column of `tokens` that a lookup reads must be added to the list below.
CREATE TABLE IF NOT EXISTS auth_epoch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
);
INSERT INTO auth_epoch (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION kci_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE auth_epoch SET n = n + 1 WHERE id = 1;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS tokens_changed ON tokens;
CREATE TRIGGER tokens_changed
AFTER UPDATE OF secret_hash, scopes, staff, expires_at, revoked_at, allow, cert OR DELETE ON tokens
FOR EACH STATEMENT EXECUTE FUNCTION kci_auth_changed();
DROP TRIGGER IF EXISTS staff_changed ON staff;
CREATE TRIGGER staff_changed AFTER UPDATE OR DELETE ON staff
FOR EACH STATEMENT EXECUTE FUNCTION kci_auth_changed();
