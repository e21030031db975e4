-- The networks a token may be used from (issue 16): a JSON array of CIDR
-- prefixes; empty, anywhere.
ALTER TABLE tokens ADD COLUMN allow TEXT NOT NULL DEFAULT '[]';
