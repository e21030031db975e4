-- The attack review (issue 9).

-- One form for every mail address: `mailto:` destinations lower-cased, as
-- the key registry keys addresses (model::EmailAddr).
UPDATE destinations SET uri = lower(uri) WHERE uri LIKE 'mailto:%';

-- A notice's one-time secret (a verification code, a key link) is kept
-- apart from its texts, only until the notice is final, then erased.
ALTER TABLE notifications ADD COLUMN secret TEXT;
-- Notices written before this kept their secret inside the texts: those
-- already final lose their texts (nothing reads them again).
UPDATE notifications SET message = NULL
 WHERE type IN ('kci.verify', 'kci.key.confirm', 'kci.key.approve')
   AND state NOT IN ('pending', 'sending');

-- Signed requests accepted as proof, by the hash of signer, signature time
-- and signed content: never accepted twice while they could be fresh.
CREATE TABLE IF NOT EXISTS used_proofs (
    hash       TEXT PRIMARY KEY,
    keep_until INTEGER NOT NULL
);

-- Counters behind every limit on what outsiders can make kci do (refusal
-- mails and key submissions per address and per source, wrong codes per
-- token): a fixed window per (bucket, key).
CREATE TABLE IF NOT EXISTS throttle (
    bucket       TEXT NOT NULL,
    key          TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (bucket, key)
);
DROP TABLE IF EXISTS key_refusals;

-- Verification codes per destination: how many were sent and how many
-- wrong codes were tried in the current day, so renewing a code does not
-- renew the guesses.
ALTER TABLE destinations ADD COLUMN codes_sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE destinations ADD COLUMN code_sent_at INTEGER;
ALTER TABLE destinations ADD COLUMN wrong_codes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE destinations ADD COLUMN code_window_start INTEGER;
