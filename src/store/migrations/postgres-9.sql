-- What the customer proved a change with (issue 12): a JSON array of
-- factors such as "split_code:<mail>+<second>" or "own_connection:<ip>".
ALTER TABLE changes ADD COLUMN factors TEXT NOT NULL DEFAULT '[]';
-- The network prefixes an account's own connections come from, as the
-- source system knows them (JSON array of CIDR prefixes).
ALTER TABLE accounts ADD COLUMN prefixes TEXT NOT NULL DEFAULT '[]';
