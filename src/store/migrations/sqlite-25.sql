-- Nothing: migration 25 gives PostgreSQL's text columns the byte order
-- (collation "C") SQLite's BINARY has always had.
SELECT 1;
