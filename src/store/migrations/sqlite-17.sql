-- What a node may cache of bearer tokens (web::auth::TokenCache) stays
-- true while `auth_epoch.n` stays the same: every change to what a token
-- lookup answers (a token revoked, rotated, re-scoped, re-bound, deleted;
-- a staff member disabled, re-roled, deleted) moves it by one, in the
-- changing transaction, whichever process or node made the change. Only
-- a token's last use (`last_used_at`, `last_used_from`) leaves it: a new
-- column of `tokens` that a lookup reads must be added to the list below.
CREATE TABLE IF NOT EXISTS auth_epoch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  INTEGER NOT NULL
);
INSERT INTO auth_epoch (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TRIGGER IF NOT EXISTS tokens_changed
AFTER UPDATE OF secret_hash, scopes, staff, expires_at, revoked_at, allow, cert ON tokens
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS tokens_deleted AFTER DELETE ON tokens
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS staff_changed AFTER UPDATE ON staff
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS staff_deleted AFTER DELETE ON staff
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;
