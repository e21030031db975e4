-- Staff logins (trust::staff): a password (argon2id) and a TOTP secret
-- (sealed with a key derived from the code key, bound to the name), the
-- TOTP step last used (a code is accepted once: moved forward only, by a
-- compare-and-set), and the hash of an enrolment code not yet used. A
-- table of its own: a login writes its step here, and `staff`'s own
-- trigger would move the token epoch (flushing every node's token cache)
-- on every login.
CREATE TABLE IF NOT EXISTS staff_logins (
    name             TEXT PRIMARY KEY REFERENCES staff(name),
    password_hash    TEXT,
    totp_secret      TEXT,
    totp_last_step   BIGINT NOT NULL DEFAULT 0,
    enrol_hash       TEXT,
    enrol_expires_at BIGINT,
    enrolled_at      BIGINT,
    confirmed_at     BIGINT
);
-- A token made by a login (a second factor was shown); `[staff]
-- second_factor = "required"` accepts no other for a staff member. Set
-- when the token is made and never changed, so the epoch trigger need
-- not watch it.
ALTER TABLE tokens ADD COLUMN IF NOT EXISTS session BOOLEAN NOT NULL DEFAULT FALSE;
